//! Loading and attaching the eBPF programs, following [`probes::PROBES`].
pub mod btf;
pub mod preflight;
pub mod probes;
pub mod tracefs;

use std::{fs::File, path::Path};

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSock, CgroupSockAddr, ProgramError, TracePoint,
    },
    Ebpf, EbpfLoader,
};
use probes::{Attach, ProbeSpec, PROBES};
use tracing::{info, warn};

/// The eBPF object built by build.rs, embedded in the binary.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SPYGLASS_EBPF_OBJ"));

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error(transparent)]
    Preflight(#[from] preflight::PreflightError),
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
    #[error("program `{program}` refused before loading: {source}. Without it: {fallback}")]
    Layout {
        program: &'static str,
        fallback: &'static str,
        #[source]
        source: tracefs::TracefsError,
    },
    #[error("loading the eBPF object failed: {0}. Run as root, or with CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE")]
    Object(#[source] aya::EbpfError),
    #[error("the kernel verifier rejected program `{program}`: {error}\n--- verifier log (last lines) ---\n{log}\nThis is a Spyglass bug on this kernel: please report it with `uname -r` and this log")]
    Verifier {
        program: &'static str,
        error: String,
        log: String,
    },
    #[error("program `{program}` failed to load or attach to {target}: {source}. {fallback}")]
    Attach {
        program: &'static str,
        target: String,
        fallback: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("program `{0}` is missing from the embedded eBPF object (build mismatch)")]
    MissingProgram(&'static str),
    #[error("map `{0}` is missing from the embedded eBPF object (build mismatch)")]
    MissingMap(&'static str),
    #[error("cannot start the kernel diagnostics log ([kernel] debug_log): {0}")]
    DebugLog(String),
    #[error("map `{name}`: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot open the cgroup v2 root {path}: {source}")]
    CgroupRoot {
        path: String,
        source: std::io::Error,
    },
}

/// Load settings (from the agent config).
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub ring_buffer_bytes: u32,
    pub btf_path: std::path::PathBuf,
    pub cgroup_root: Option<std::path::PathBuf>,
    /// Kernel-side diagnostics (`[kernel] debug_log`).
    pub debug_log: bool,
}

pub use spyglass_proto::model::ProbeStatus;

/// Loaded and attached programs; dropping it detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    pub status: Vec<ProbeStatus>,
}

impl Probes {
    /// Check the host, load the object and attach every probe of the table.
    /// Required probes that fail abort the start; optional ones are
    /// reported and skipped.
    pub fn load(opts: &LoadOptions) -> Result<Self, BpfError> {
        let host = preflight::check(&opts.btf_path)?;
        let kernel_btf = btf::Btf::from_file(&opts.btf_path)?;
        let mut offsets = kernel_btf.kernel_offsets()?;
        drop(kernel_btf);
        let tracefs_root = tracefs::root();
        offsets.exit_group_dead = tracefs::exit_group_dead(&tracefs::read_format(
            &tracefs_root,
            "sched",
            "sched_process_exit",
        )?);
        let aya_btf =
            aya::Btf::parse_file(&opts.btf_path, aya::Endianness::default()).map_err(|e| {
                btf::BtfError::Read {
                    path: opts.btf_path.clone(),
                    source: std::io::Error::other(e.to_string()),
                }
            })?;
        // Wake the reader once a quarter of the ring is full.
        let wakeup_threshold: u64 = u64::from(opts.ring_buffer_bytes / 4);
        // aya-log levels: 0 nothing, 2 warnings (what the probes write).
        let (debug_log, log_level) = if opts.debug_log { (1u8, 2u8) } else { (0, 0) };
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&aya_btf))
            .override_global("OFFSETS", &offsets, true)
            .override_global("WAKEUP_THRESHOLD", &wakeup_threshold, true)
            .override_global("DEBUG_LOG", &debug_log, true)
            .override_global("AYA_LOG_LEVEL", &log_level, true)
            .map_max_entries("EVENTS", opts.ring_buffer_bytes)
            .load(EBPF_OBJECT)
            .map_err(BpfError::Object)?;
        info!(?offsets, kernel = %host.kernel, "eBPF object loaded");
        // Taken before the programs load (its map must stay open) and
        // read by its own thread from then on.
        let diagnostics = if opts.debug_log {
            Some(
                aya_log::EbpfLogger::init(&mut ebpf)
                    .map_err(|e| BpfError::DebugLog(e.to_string()))?,
            )
        } else {
            None
        };

        let cgroup_root = match &opts.cgroup_root {
            Some(p) => p.clone(),
            None => preflight::cgroup2_root()?,
        };
        let cgroup = File::open(&cgroup_root).map_err(|source| BpfError::CgroupRoot {
            path: cgroup_root.display().to_string(),
            source,
        })?;

        let mut status = Vec::new();
        let target = Target {
            btf: &aya_btf,
            cgroup: &cgroup,
            cgroup_root: &cgroup_root,
            tracefs_root: &tracefs_root,
        };
        for spec in PROBES {
            match attach(&mut ebpf, spec, &target) {
                Ok(()) => status.push(ProbeStatus {
                    program: spec.program.into(),
                    attached: true,
                    error: None,
                    note: note(spec, &offsets).map(Into::into),
                }),
                Err(e) if !spec.required => {
                    let error = spyglass_proto::logging::error_chain(&e);
                    warn!(program = spec.program, %error, "optional probe not attached");
                    status.push(ProbeStatus {
                        program: spec.program.into(),
                        attached: false,
                        error: Some(error),
                        note: None,
                    });
                }
                Err(e) => return Err(e),
            }
        }
        let release = status
            .iter()
            .any(|p| p.program == "sock_release" && p.attached);
        if release {
            enable_features(&mut ebpf, agent_common::feature::TRACK_UDP_BINDS)?;
        }
        if let Some(mut logger) = diagnostics {
            spawn_diagnostics(move || logger.flush());
            info!("kernel diagnostics on ([kernel] debug_log)");
        }
        Ok(Self { ebpf, status })
    }

    /// Detach every program: no probe runs after this returns, so no new
    /// record reaches the ring buffer and no loss counter moves. The maps
    /// already taken (ring buffer, counters, enforcement) stay usable.
    pub fn detach(self) {
        let programs = self.ebpf.programs().count();
        drop(self.ebpf);
        info!(programs, "probes detached");
    }

    /// Take the ring buffer of records (once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, BpfError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(BpfError::MissingMap("EVENTS"))?;
        RingBuf::try_from(map).map_err(|source| BpfError::Map {
            name: "EVENTS",
            source,
        })
    }

    /// Take the enforcement maps (once).
    pub fn take_enforcement(&mut self) -> Result<crate::detect::enforce::Maps, BpfError> {
        fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
            ebpf: &mut Ebpf,
            name: &'static str,
        ) -> Result<T, BpfError> {
            let map = ebpf.take_map(name).ok_or(BpfError::MissingMap(name))?;
            T::try_from(map).map_err(|source| BpfError::Map { name, source })
        }
        Ok(crate::detect::enforce::Maps {
            flags: take(&mut self.ebpf, "ENFORCE")?,
            exec: take(&mut self.ebpf, "EXEC_KILL")?,
            connect: take(&mut self.ebpf, "CONNECT_DENY")?,
        })
    }

    /// Take the per-CPU loss counters (once).
    pub fn take_counters(&mut self) -> Result<PerCpuArray<MapData, u64>, BpfError> {
        let map = self
            .ebpf
            .take_map("COUNTERS")
            .ok_or(BpfError::MissingMap("COUNTERS"))?;
        PerCpuArray::try_from(map).map_err(|source| BpfError::Map {
            name: "COUNTERS",
            source,
        })
    }
}

/// Turn on `agent_common::feature` bits in the `FEATURES` map (work that
/// needs a probe attached first, such as remembering UDP binds for
/// `sock_release`).
fn enable_features(ebpf: &mut Ebpf, bits: u32) -> Result<(), BpfError> {
    const NAME: &str = "FEATURES";
    let map = ebpf.map_mut(NAME).ok_or(BpfError::MissingMap(NAME))?;
    let mut features: aya::maps::Array<_, u32> =
        aya::maps::Array::try_from(map).map_err(|source| BpfError::Map { name: NAME, source })?;
    let old = features.get(&0, 0).unwrap_or(0);
    features
        .set(0, old | bits, 0)
        .map_err(|source| BpfError::Map { name: NAME, source })
}

/// Drain the probes' diagnostics into the agent's log (through the `log`
/// bridge of the tracing subscriber), every 100 ms, for the agent's life.
fn spawn_diagnostics(mut flush: impl FnMut() + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name("kernel-diag".into())
        .spawn(move || loop {
            // aya-log panics on a record it cannot parse: say so, not die
            // silently with the thread.
            let drained = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut flush));
            if drained.is_err() {
                warn!("a kernel diagnostic record could not be read; diagnostics stop");
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the kernel diagnostics reader");
    }
}

/// What the probes attach to on this host.
struct Target<'a> {
    btf: &'a aya::Btf,
    cgroup: &'a File,
    cgroup_root: &'a Path,
    tracefs_root: &'a Path,
}

/// Where a probe behaves differently between kernels, which way it runs.
fn note(spec: &ProbeSpec, offsets: &agent_common::KernelOffsets) -> Option<&'static str> {
    (spec.program == "sched_process_exit").then_some(
        if offsets.exit_group_dead == agent_common::EXIT_GROUP_DEAD_ABSENT {
            "last thread found by signal->live (this kernel's exit record has no group_dead)"
        } else {
            "last thread found by the exit record's group_dead"
        },
    )
}

/// The record layout a classic tracepoint program reads must be this
/// kernel's (format file), before the program is loaded.
fn check_layout(spec: &ProbeSpec, tracefs_root: &Path) -> Result<(), BpfError> {
    let Attach::TracePoint {
        category,
        name,
        layout,
    } = spec.attach
    else {
        return Ok(());
    };
    let wrap = |source| BpfError::Layout {
        program: spec.program,
        fallback: spec.fallback,
        source,
    };
    let fields = tracefs::read_format(tracefs_root, category, name).map_err(wrap)?;
    tracefs::check_layout(&format!("{category}/{name}"), &fields, layout).map_err(wrap)
}

fn attach(ebpf: &mut Ebpf, spec: &ProbeSpec, on: &Target) -> Result<(), BpfError> {
    check_layout(spec, on.tracefs_root)?;
    let prog = ebpf
        .program_mut(spec.program)
        .ok_or(BpfError::MissingProgram(spec.program))?;
    let (btf, cgroup) = (on.btf, on.cgroup);
    let target = match spec.attach {
        Attach::TracePoint { category, name, .. } => format!("tracepoint {category}/{name}"),
        Attach::BtfTracePoint { name } => format!("tp_btf/{name}"),
        Attach::CgroupSockAddr | Attach::CgroupSock => {
            format!("cgroup {}", on.cgroup_root.display())
        }
    };
    let wrap = |source: ProgramError| match source {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            BpfError::Verifier {
                program: spec.program,
                error: io_error.to_string(),
                log: tail,
            }
        }
        source => BpfError::Attach {
            program: spec.program,
            target: target.clone(),
            fallback: spec.fallback,
            source: Box::new(source),
        },
    };
    let result: Result<(), ProgramError> = (|| {
        match spec.attach {
            Attach::TracePoint { category, name, .. } => {
                let p: &mut TracePoint = prog.try_into()?;
                p.load()?;
                p.attach(category, name)?;
            }
            Attach::BtfTracePoint { name } => {
                let p: &mut BtfTracePoint = prog.try_into()?;
                p.load(name, btf)?;
                p.attach()?;
            }
            Attach::CgroupSockAddr => {
                let p: &mut CgroupSockAddr = prog.try_into()?;
                p.load()?;
                // bpf_link_create: links coexist with other programs on the
                // cgroup whatever the mode; the mode flag must be 0 (Single).
                p.attach(cgroup, CgroupAttachMode::Single)?;
            }
            Attach::CgroupSock => {
                let p: &mut CgroupSock = prog.try_into()?;
                p.load()?;
                p.attach(cgroup, CgroupAttachMode::Single)?;
            }
        }
        Ok(())
    })();
    result.map_err(wrap)
}
