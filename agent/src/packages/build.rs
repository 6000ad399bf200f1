//! Building a [`PackageIndex`]: packages interned once, each owned path
//! normalised and stored once, a budget on the bytes read.
use super::{
    paths::{normalise, InsertError, PathTable, UsrAliases, PATH_MAX},
    purl::Distro,
    IndexStats, Package, PackageIndex, PackagesError,
};
use std::{collections::HashMap, path::PathBuf};

/// Most database bytes read for one rootfs, all files together (this host,
/// 780 packages, reads about 8 MiB).
pub const MAX_TOTAL_BYTES: usize = 256 << 20;

pub(super) struct Builder {
    root: PathBuf,
    packages: Vec<Package>,
    table: PathTable,
    aliases: UsrAliases,
    distro: Option<Distro>,
    /// Normalised diverted path -> (normalised new path, diverting package).
    diversions: HashMap<String, (String, String)>,
    read: usize,
    scratch: String,
    pub stats: IndexStats,
}

impl Builder {
    pub fn new(root: PathBuf, aliases: UsrAliases, distro: Option<Distro>) -> Self {
        Builder {
            root,
            packages: Vec::new(),
            table: PathTable::default(),
            aliases,
            distro,
            diversions: HashMap::new(),
            read: 0,
            scratch: String::new(),
            stats: IndexStats::default(),
        }
    }

    pub fn distro(&self) -> Option<&Distro> {
        self.distro.as_ref()
    }

    /// Count `n` more bytes read; an error past [`MAX_TOTAL_BYTES`].
    pub fn charge(&mut self, n: usize) -> Result<(), PackagesError> {
        self.read = self.read.saturating_add(n);
        if self.read > MAX_TOTAL_BYTES {
            return Err(PackagesError::TotalTooLarge {
                root: self.root.clone(),
                limit: MAX_TOTAL_BYTES,
            });
        }
        Ok(())
    }

    pub fn add_package(&mut self, p: Package) -> u32 {
        self.packages.push(p);
        (self.packages.len() - 1) as u32
    }

    pub fn set_diversions(&mut self, raw: &HashMap<String, (String, String)>) {
        let mut a = [0u8; PATH_MAX];
        let mut b = [0u8; PATH_MAX];
        for (from, (to, by)) in raw {
            let (Some(f), Some(t)) = (
                normalise(from, &self.aliases, &mut a),
                normalise(to, &self.aliases, &mut b),
            ) else {
                continue;
            };
            self.diversions
                .insert(f.to_string(), (t.to_string(), by.clone()));
        }
    }

    /// An absolute path owned by package `id`.
    pub fn add_path(&mut self, id: u32, path: &[u8]) {
        self.add_deb_path(id, "", path);
    }

    /// A path relative to `/` (md5sums, apk).
    pub fn add_relative_path(&mut self, id: u32, rel: &[u8]) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        match std::str::from_utf8(rel) {
            Ok(r) => {
                scratch.push('/');
                scratch.push_str(r);
                self.add_path(id, scratch.as_bytes());
            }
            Err(_) => self.stats.unusable_paths += 1,
        }
        self.scratch = scratch;
    }

    /// A path listed by dpkg package `pkg`: a diversion of it by another
    /// package moves it (dpkg installed it at the diversion's target).
    pub fn add_deb_path(&mut self, id: u32, pkg: &str, path: &[u8]) {
        let mut buf = [0u8; PATH_MAX];
        let Some(p) = std::str::from_utf8(path)
            .ok()
            .and_then(|p| normalise(p, &self.aliases, &mut buf))
        else {
            self.stats.unusable_paths += 1;
            return;
        };
        let p = match self.diversions.get(p) {
            Some((to, by)) if !pkg.is_empty() && by != pkg => to.as_str(),
            _ => p,
        };
        match self.table.insert(p, id) {
            Ok(()) => {}
            Err(InsertError::Present) => self.stats.shared_paths += 1,
            Err(InsertError::Full) => self.stats.unusable_paths += 1,
        }
    }

    pub fn finish(mut self) -> PackageIndex {
        self.table.shrink();
        self.packages.shrink_to_fit();
        self.stats.bytes_read = self.read;
        PackageIndex {
            packages: self.packages,
            paths: self.table,
            aliases: self.aliases,
            distro: self.distro,
            stats: self.stats,
        }
    }
}
