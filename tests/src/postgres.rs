//! A real PostgreSQL server for tests, from Debian's package (`cargo
//! xtask setup` installs `postgresql`): a fresh cluster in a scratch
//! directory, listening on a loopback port only, trust authentication
//! for 127.0.0.1 only, stopped and removed on drop. Under root it runs as
//! `nobody` (initdb refuses root), in a directory that user owns.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The superuser and database the cluster is made with.
pub const USER: &str = "spyglass";
pub const DB: &str = "postgres";

/// The newest `/usr/lib/postgresql/*/bin` holding initdb and pg_ctl.
pub fn bin_dir() -> PathBuf {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((version, bin))
        })
        .collect();
    dirs.sort();
    let Some((_, bin)) = dirs.pop() else {
        panic!(
            "no PostgreSQL server under /usr/lib/postgresql/*/bin (initdb, pg_ctl): \
             run `cargo xtask setup` (it installs Debian's postgresql)"
        )
    };
    bin
}

fn is_root() -> bool {
    // SAFETY: trivial libc call.
    unsafe { libc::geteuid() == 0 }
}

/// One PostgreSQL server of a test.
pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

impl Postgres {
    /// initdb a cluster under `parent` and start it on a free loopback
    /// port.
    pub fn start(parent: &Path) -> Postgres {
        let dir = parent.join("pg");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        if is_root() {
            // nobody must own the cluster; its parent directories must be
            // traversable (scratch dirs are 0755)
            let st = Command::new("chown")
                .args(["-R", "nobody"])
                .arg(&dir)
                .status()
                .expect("run chown");
            assert!(st.success(), "chown -R nobody {}", dir.display());
        }
        let pg = Postgres {
            port: crate::free_port(),
            dir,
            bin: bin_dir(),
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                USER,
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        // trust over TCP from 127.0.0.1 only (and the private socket dir)
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        pg.start_again();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Run a server program, as nobody under root; panics with its output
    /// when it fails.
    fn run(&self, prog: &str, args: &[&str]) {
        let path = self.bin.join(prog);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "nobody", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = cmd
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
        assert!(
            out.status.success(),
            "{prog} {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `postgres://USER@127.0.0.1:PORT/DB`.
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{DB}", self.port)
    }

    /// Stop the server (fast shutdown: clients are disconnected).
    pub fn stop(&self) {
        let data = self.data();
        self.run(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        );
    }

    /// Start the (stopped) server again on the same port; returns once
    /// it accepts connections.
    pub fn start_again(&self) {
        let data = self.data();
        let log = self.dir.join("server.log");
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off",
            self.port,
            self.dir.display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// Run `sql` with psql; its unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &self.url()])
            .args(["-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data();
        let pg_ctl = self.bin.join("pg_ctl");
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "nobody", "--"]).arg(&pg_ctl);
            c
        } else {
            Command::new(&pg_ctl)
        };
        // immediate: the test is over; stopped already is fine
        let _ = cmd
            .args([
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .current_dir(&self.dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
