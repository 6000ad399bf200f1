//! The containerd client: container id -> [`ContainerMeta`], and the event
//! stream that keeps the agent's cache filled before a container's first
//! exec. One task owns the connection; the pipeline talks to it through
//! two channels (lookups in, [`Update`]s out).
//!
//! On connect it subscribes to events first, then lists every container of
//! every namespace (`k8s.io` first), so nothing created in between is
//! missed. When containerd goes away it reports [`Update::Unavailable`],
//! retries, and resyncs on return.
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use containerd_client::{
    services::v1::{
        containers_client::ContainersClient, content_client::ContentClient,
        events_client::EventsClient, images_client::ImagesClient,
        namespaces_client::NamespacesClient, tasks_client::TasksClient, Container,
        GetContainerRequest, GetImageRequest, ListContainersRequest, ListNamespacesRequest,
        ListTasksRequest, ReadContentRequest, SubscribeRequest,
    },
    tonic::{transport::Channel, Code, Request},
    with_namespace,
};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tracing::{debug, info, warn};

use super::meta::{self, ContainerMeta, Image, ImageLineage};
use crate::event::Unattributed;

/// What the containerd task tells the pipeline.
#[derive(Debug)]
pub enum Update {
    /// A container is known (created, its task started, or looked up).
    Upsert(Arc<ContainerMeta>),
    /// The listing at (re)connect names this container, with the exit
    /// status of its init if that has exited (and is not deleted yet).
    Listed {
        meta: Arc<ContainerMeta>,
        exit_code: Option<i32>,
    },
    /// containerd deleted it.
    Deleted(String),
    /// Its init process (the task whose id is the container's) exited with
    /// this status (a signal n is 128 + n, as containerd reports it).
    Exited { id: String, exit_code: i32 },
    /// No namespace has this id (after retries).
    NotFound(String),
    /// Connected, and every container listed: one not listed is gone.
    Synced,
    /// Not connected; events are marked unattributed with this reason.
    Unavailable(Unattributed),
}

/// A containerd call that takes longer is treated as containerd being
/// unwell: the session ends and reconnects.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Soonest retry after a failed connection when events wait for metadata.
const QUICK_RETRY: Duration = Duration::from_millis(100);
/// Listing every container at (re)connect.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

async fn within<T>(
    limit: Duration,
    call: &'static str,
    fut: impl std::future::Future<Output = Result<T, ContainerdError>>,
) -> Result<T, ContainerdError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| ContainerdError::Timeout { call, limit })?
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("containerd {call} did not answer within {limit:?}")]
    Timeout { call: &'static str, limit: Duration },
    #[error("containerd socket {path} does not exist")]
    SocketMissing { path: PathBuf },
    #[error("cannot connect to containerd at {path}: {source}")]
    Connect {
        path: PathBuf,
        source: containerd_client::tonic::transport::Error,
    },
    #[error("containerd {call} failed: {status}")]
    Call {
        call: &'static str,
        status: containerd_client::tonic::Status,
    },
}

impl ContainerdError {
    /// The reason events carry while this error lasts.
    pub fn reason(&self) -> Unattributed {
        match self {
            ContainerdError::SocketMissing { .. } => Unattributed::ContainerdSocketMissing,
            ContainerdError::Connect { .. } => Unattributed::ContainerdUnreachable,
            ContainerdError::Call { .. } | ContainerdError::Timeout { .. } => {
                Unattributed::ContainerdError
            }
        }
    }
}

fn call(call: &'static str) -> impl FnOnce(containerd_client::tonic::Status) -> ContainerdError {
    move |status| ContainerdError::Call { call, status }
}

/// Settings of the client.
#[derive(Clone, Debug)]
pub struct Options {
    pub socket: PathBuf,
    /// Wait between connection attempts.
    pub retry: Duration,
    /// Attempts for an id containerd does not know (yet), and the wait
    /// between them.
    pub lookup_attempts: u32,
    pub lookup_spacing: Duration,
}

async fn connect(socket: &Path) -> Result<Channel, ContainerdError> {
    if !socket.exists() {
        return Err(ContainerdError::SocketMissing {
            path: socket.to_owned(),
        });
    }
    containerd_client::connect(socket)
        .await
        .map_err(|source| ContainerdError::Connect {
            path: socket.to_owned(),
            source,
        })
}

/// Namespaces, `k8s.io` first (a containerd that accepts the connection
/// but never answers must not hold the session, or the agent's stop).
async fn namespaces(ch: &Channel) -> Result<Vec<String>, ContainerdError> {
    let mut client = NamespacesClient::new(ch.clone());
    let resp = within(CALL_TIMEOUT, "namespaces.list", async {
        client
            .list(ListNamespacesRequest::default())
            .await
            .map_err(call("namespaces.list"))
    })
    .await?;
    let mut names: Vec<String> = resp
        .into_inner()
        .namespaces
        .into_iter()
        .map(|n| n.name)
        .collect();
    names.sort_by_key(|n| (n != "k8s.io", n.clone()));
    Ok(names)
}

async fn read_blob(ch: &Channel, ns: &str, digest: &str) -> Result<Vec<u8>, ContainerdError> {
    let req = ReadContentRequest {
        digest: digest.to_owned(),
        offset: 0,
        size: 0,
    };
    let mut stream = ContentClient::new(ch.clone())
        .read(with_namespace!(req, ns))
        .await
        .map_err(call("content.read"))?
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(call("content.read"))?;
        out.extend_from_slice(&chunk.data);
        if out.len() > 4 << 20 {
            break; // manifests and indexes are small; do not buffer a layer
        }
    }
    Ok(out)
}

/// What an image target resolves to: its digests, declared ports and
/// lineage (immutable for a target digest).
#[derive(Clone, Default)]
struct Resolved {
    digest: String,
    index: String,
    config: String,
    ports: Vec<String>,
    lineage: Option<Arc<ImageLineage>>,
}

impl Resolved {
    fn fill(&self, image: &mut Image) {
        image.digest.clone_from(&self.digest);
        image.index_digest.clone_from(&self.index);
        image.config_digest.clone_from(&self.config);
        image.exposed_ports.clone_from(&self.ports);
        image.lineage.clone_from(&self.lineage);
    }
}

/// Digests behind an image target, cached by target digest (immutable).
#[derive(Default)]
struct ImageDigests {
    by_target: HashMap<String, Resolved>,
}

/// A blob of the content store, or `None` (logged at debug: the image
/// is reported with what could be read).
async fn blob(ch: &Channel, ns: &str, digest: &str, what: &str, image: &str) -> Option<Vec<u8>> {
    match read_blob(ch, ns, digest).await {
        Ok(json) => Some(json),
        Err(e) => {
            debug!(image, error = %e, "cannot read image {what}");
            None
        }
    }
}

impl ImageDigests {
    const MAX: usize = 1024;

    async fn resolve(&mut self, ch: &Channel, ns: &str, reference: &str) -> Image {
        let mut image = Image {
            reference: reference.to_owned(),
            ..Image::default()
        };
        if reference.is_empty() {
            return image;
        }
        let req = GetImageRequest {
            name: reference.to_owned(),
        };
        let target = match ImagesClient::new(ch.clone())
            .get(with_namespace!(req, ns))
            .await
        {
            Ok(r) => r.into_inner().image.and_then(|i| i.target),
            Err(status) => {
                debug!(image = reference, %status, "image not in containerd");
                None
            }
        };
        let Some(target) = target else {
            return image;
        };
        if let Some(r) = self.by_target.get(&target.digest) {
            r.fill(&mut image);
            return image;
        }
        let (r, complete) = Self::read(ch, ns, reference, &target.digest, &target.media_type).await;
        r.fill(&mut image);
        // a read that failed (containerd busy) is tried again next time
        if complete {
            if self.by_target.len() >= Self::MAX {
                self.by_target.clear();
            }
            self.by_target.insert(target.digest, r);
        }
        image
    }

    /// Read a target's index (if it is one), manifest and config; and
    /// whether every blob could be read.
    async fn read(
        ch: &Channel,
        ns: &str,
        image: &str,
        target: &str,
        media: &str,
    ) -> (Resolved, bool) {
        let mut complete = true;
        let mut r = Resolved {
            digest: target.to_owned(),
            ..Resolved::default()
        };
        let (mut base, mut base_name) = (String::new(), String::new());
        if meta::is_index(media) {
            r.index = target.to_owned();
            r.digest = String::new();
            match blob(ch, ns, target, "index", image).await {
                Some(json) => {
                    r.digest = meta::manifest_for_platform(&json, "linux", meta::host_arch())
                        .unwrap_or_default();
                    (base, base_name) = meta::base_of(&json);
                }
                None => complete = false,
            }
        }
        if !r.digest.is_empty() {
            match blob(ch, ns, &r.digest, "manifest", image).await {
                Some(json) => {
                    r.config = meta::config_of_manifest(&json).unwrap_or_default();
                    // the platform manifest's annotations over the
                    // index's, each one it has
                    let (b, n) = meta::base_of(&json);
                    if !b.is_empty() {
                        base = b;
                    }
                    if !n.is_empty() {
                        base_name = n;
                    }
                }
                None => complete = false,
            }
        }
        let mut diff_ids = Vec::new();
        if !r.config.is_empty() {
            match blob(ch, ns, &r.config, "config", image).await {
                Some(json) => {
                    r.ports = meta::exposed_ports_of_config(&json);
                    diff_ids = meta::diff_ids_of_config(&json);
                }
                None => complete = false,
            }
        }
        if !(base.is_empty() && base_name.is_empty() && diff_ids.is_empty()) {
            r.lineage = Some(Arc::new(ImageLineage {
                base_digest: base,
                base_name,
                diff_ids,
            }));
        }
        (r, complete)
    }
}

fn timestamp(t: Option<&prost_types::Timestamp>) -> Option<crate::clock::Timestamp> {
    let t = t?;
    let ns = t
        .seconds
        .checked_mul(1_000_000_000)?
        .checked_add(i64::from(t.nanos))?;
    Some(crate::clock::Timestamp(ns))
}

/// containerd's record -> metadata (the image resolved separately).
fn meta_of(c: Container, ns: &str, image: Image) -> ContainerMeta {
    let labels: BTreeMap<String, String> = c.labels.into_iter().collect();
    let posture = c.spec.as_ref().and_then(|spec| {
        meta::posture_from_spec(&spec.value, meta::is_host_namespace)
            .map_err(|e| debug!(container = %c.id, error = %e, "OCI spec not readable"))
            .ok()
    });
    ContainerMeta {
        name: meta::name_from_labels(&c.id, &labels),
        namespace: ns.to_owned(),
        oci_runtime: c.runtime.map(|r| r.name).unwrap_or_default(),
        created: timestamp(c.created_at.as_ref()),
        image,
        pod: meta::pod_from_labels(&labels),
        // name and pod are read from all of them, the report is bounded
        labels: meta::bounded_labels(labels, &c.id),
        posture,
        entrypoint: c
            .spec
            .as_ref()
            .map(|s| meta::args_from_spec(&s.value))
            .unwrap_or_default(),
        id: c.id,
    }
}

/// The connection and what it resolves.
struct Client {
    ch: Channel,
    namespaces: Vec<String>,
    images: ImageDigests,
    /// Pod labels by CRI sandbox id.
    pod_labels: HashMap<String, BTreeMap<String, String>>,
}

impl Client {
    async fn meta(&mut self, c: Container, ns: &str) -> ContainerMeta {
        let image = self.images.resolve(&self.ch, ns, &c.image).await;
        let sandbox = c
            .spec
            .as_ref()
            .and_then(|s| meta::sandbox_of_spec(&s.value));
        let mut m = meta_of(c, ns, image);
        if let (Some(sb), Some(pod)) = (sandbox, m.pod.as_mut()) {
            pod.labels = self.sandbox_labels(&sb, ns).await;
        }
        m
    }

    /// The labels of a CRI sandbox (its pod's labels), cached.
    async fn sandbox_labels(&mut self, id: &str, ns: &str) -> BTreeMap<String, String> {
        if let Some(l) = self.pod_labels.get(id) {
            return l.clone();
        }
        let req = GetContainerRequest { id: id.to_owned() };
        let labels = match ContainersClient::new(self.ch.clone())
            .get(with_namespace!(req, ns))
            .await
        {
            Ok(r) => r
                .into_inner()
                .container
                .map(|c| {
                    let own = meta::pod_labels_of_sandbox(&c.labels.into_iter().collect());
                    meta::bounded_labels(own, id)
                })
                .unwrap_or_default(),
            Err(s) => {
                debug!(sandbox = id, status = %s, "pod sandbox not readable");
                return BTreeMap::new();
            }
        };
        if self.pod_labels.len() >= 4096 {
            self.pod_labels.clear();
        }
        self.pod_labels.insert(id.to_owned(), labels.clone());
        labels
    }

    /// `id` in namespace `ns`, if there.
    async fn get(&mut self, id: &str, ns: &str) -> Result<Option<ContainerMeta>, ContainerdError> {
        let req = GetContainerRequest { id: id.to_owned() };
        match ContainersClient::new(self.ch.clone())
            .get(with_namespace!(req, ns))
            .await
        {
            Ok(r) => match r.into_inner().container {
                Some(c) => Ok(Some(self.meta(c, ns).await)),
                None => Ok(None),
            },
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(call("containers.get")(s)),
        }
    }

    /// Find `id` in any namespace.
    async fn lookup(&mut self, id: &str) -> Result<Option<ContainerMeta>, ContainerdError> {
        for ns in self.namespaces.clone() {
            if let Some(m) = self.get(id, &ns).await? {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }

    /// Every container of every namespace, with the exit status of those
    /// whose task has stopped (and is not deleted yet).
    async fn list_all(&mut self) -> Result<Vec<(ContainerMeta, Option<i32>)>, ContainerdError> {
        let mut out = Vec::new();
        for ns in self.namespaces.clone() {
            let stopped = self.stopped_tasks(&ns).await?;
            let req = ListContainersRequest::default();
            let resp = ContainersClient::new(self.ch.clone())
                .list(with_namespace!(req, ns.as_str()))
                .await
                .map_err(call("containers.list"))?;
            for c in resp.into_inner().containers {
                let exit_code = stopped.get(&c.id).copied();
                out.push((self.meta(c, &ns).await, exit_code));
            }
        }
        Ok(out)
    }

    /// The init tasks of namespace `ns` that have stopped: container id ->
    /// exit status.
    async fn stopped_tasks(&self, ns: &str) -> Result<HashMap<String, i32>, ContainerdError> {
        use containerd_client::types::v1::Status;
        let req = ListTasksRequest::default();
        let resp = TasksClient::new(self.ch.clone())
            .list(with_namespace!(req, ns))
            .await
            .map_err(call("tasks.list"))?;
        Ok(stopped_of(resp.into_inner().tasks, Status::Stopped as i32))
    }
}

/// Init tasks in status `stopped`: container id -> exit status.
fn stopped_of(
    tasks: Vec<containerd_client::types::v1::Process>,
    stopped: i32,
) -> HashMap<String, i32> {
    tasks
        .into_iter()
        .filter(|t| t.status == stopped)
        .map(|t| (t.id, t.exit_status as i32))
        .collect()
}

/// What a containerd event means for the cache.
#[derive(Debug, PartialEq, Eq)]
enum Topic {
    /// Fetch this container (new, or its task started).
    Refresh(String),
    Deleted(String),
    /// The container's init task exited.
    Exited {
        id: String,
        exit_code: i32,
    },
    /// A namespace appeared: look in it too.
    Namespace,
    Ignore,
}

fn topic(env: &containerd_client::types::Envelope) -> Topic {
    use containerd_client::events::{ContainerCreate, ContainerDelete, TaskExit, TaskStart};
    let Some(any) = env.event.as_ref() else {
        return Topic::Ignore;
    };
    let data = any.value.as_slice();
    match env.topic.as_str() {
        "/containers/create" => ContainerCreate::decode(data).map(|e| Topic::Refresh(e.id)),
        "/tasks/start" => TaskStart::decode(data).map(|e| Topic::Refresh(e.container_id)),
        "/containers/delete" => ContainerDelete::decode(data).map(|e| Topic::Deleted(e.id)),
        // an exec'd process's exit has its own id: only init's counts
        "/tasks/exit" => TaskExit::decode(data).map(|e| {
            if e.id == e.container_id {
                Topic::Exited {
                    id: e.container_id,
                    exit_code: e.exit_status as i32,
                }
            } else {
                Topic::Ignore
            }
        }),
        "/namespaces/create" => Ok(Topic::Namespace),
        _ => Ok(Topic::Ignore),
    }
    .unwrap_or(Topic::Ignore)
}

/// Run until `lookups` closes. Never fails: containerd being away is a
/// state, reported through `updates`.
pub async fn run(
    opts: Options,
    mut lookups: mpsc::Receiver<String>,
    updates: mpsc::Sender<Update>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) {
    let mut warned: Option<Unattributed> = None;
    loop {
        let err = match session(&opts, &mut lookups, &updates, &mut warned, &metrics).await {
            Ok(()) => return, // the agent is stopping
            Err(e) => e,
        };
        let reason = err.reason();
        if warned != Some(reason) {
            match &err {
                ContainerdError::SocketMissing { path } => warn!(
                    socket = %path.display(),
                    "containerd socket not found: container events are marked unattributed until it appears; \
                     start containerd or set [containerd] socket (--containerd-socket) to its socket path"
                ),
                e => {
                    warn!(error = %e, "containerd unavailable: container events are marked unattributed; retrying");
                }
            }
            warned = Some(reason);
        }
        if updates.send(Update::Unavailable(reason)).await.is_err() {
            return;
        }
        // Wait before retrying; a lookup (an event from a container the
        // agent does not know) retries sooner, at most every QUICK_RETRY,
        // so a containerd that just came back attributes it.
        let attempted = tokio::time::Instant::now();
        let until = attempted + opts.retry;
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            id = lookups.recv() => {
                if id.is_none() {
                    return;
                }
                tokio::time::sleep_until((attempted + QUICK_RETRY).min(until)).await;
            }
        }
    }
}

/// Aborts a task when dropped (the subscription ends with its session).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One connection: subscribe, sync, then serve lookups and events until
/// containerd goes away (Err) or the agent stops (Ok).
async fn session(
    opts: &Options,
    lookups: &mut mpsc::Receiver<String>,
    updates: &mpsc::Sender<Update>,
    warned: &mut Option<Unattributed>,
    metrics: &crate::metrics::Metrics,
) -> Result<(), ContainerdError> {
    let ch = within(CALL_TIMEOUT * 2, "connect", connect(&opts.socket)).await?;
    let filters = [
        "topic==\"/containers/create\"",
        "topic==\"/containers/delete\"",
        "topic==\"/tasks/start\"",
        "topic==\"/tasks/exit\"",
        "topic==\"/namespaces/create\"",
    ];
    // containerd sends the stream's headers with the first event, so the
    // subscription waits in its own task while the sync runs; it is asked
    // for first, and the lookups of the pending queue cover the moment
    // before containerd registers it.
    let (events_tx, mut events) = mpsc::channel(256);
    let _subscription = {
        let ch = ch.clone();
        let req = SubscribeRequest {
            filters: filters
                .iter()
                .map(std::string::ToString::to_string)
                .collect(),
        };
        AbortOnDrop(tokio::spawn(async move {
            let mut stream = match EventsClient::new(ch).subscribe(req).await {
                Ok(r) => r.into_inner(),
                Err(status) => {
                    let _ = events_tx.send(Err(status)).await;
                    return;
                }
            };
            while let Some(item) = stream.next().await {
                if events_tx.send(item).await.is_err() {
                    return;
                }
            }
        }))
    };
    let mut client = Client {
        namespaces: namespaces(&ch).await?,
        ch,
        images: ImageDigests::default(),
        pod_labels: HashMap::new(),
    };
    let t0 = Instant::now();
    let all = within(SYNC_TIMEOUT, "containers.list", client.list_all()).await?;
    let n = all.len();
    for (m, exit_code) in all {
        // a container whose init has exited is listed, not running
        let listed = Update::Listed {
            meta: Arc::new(m),
            exit_code,
        };
        if updates.send(listed).await.is_err() {
            return Ok(());
        }
    }
    info!(
        socket = %opts.socket.display(),
        namespaces = ?client.namespaces,
        containers = n,
        took_ms = t0.elapsed().as_millis() as u64,
        "containerd connected and synced"
    );
    if warned.take().is_some() {
        info!("containerd is back: container events are attributed again");
    }
    if updates.send(Update::Synced).await.is_err() {
        return Ok(());
    }
    loop {
        tokio::select! {
            env = events.recv() => {
                let env = match env {
                    Some(Ok(env)) => env,
                    Some(Err(status)) => return Err(call("events.subscribe")(status)),
                    None => return Err(call("events.subscribe")(
                        containerd_client::tonic::Status::unavailable("event stream ended"))),
                };
                let update = match topic(&env) {
                    Topic::Refresh(id) => {
                        let ns = env.namespace.clone();
                        match within(CALL_TIMEOUT, "containers.get", client.get(&id, &ns)).await? {
                            Some(m) => Update::Upsert(Arc::new(m)),
                            None => continue, // created and deleted before we asked
                        }
                    }
                    Topic::Deleted(id) => Update::Deleted(id),
                    Topic::Exited { id, exit_code } => Update::Exited { id, exit_code },
                    Topic::Namespace => {
                        client.namespaces = namespaces(&client.ch).await?;
                        continue;
                    }
                    Topic::Ignore => continue,
                };
                if updates.send(update).await.is_err() {
                    return Ok(());
                }
            }
            id = lookups.recv() => {
                let Some(id) = id else { return Ok(()) };
                let t = Instant::now();
                let mut found = None;
                for attempt in 0..opts.lookup_attempts.max(1) {
                    if attempt > 0 {
                        tokio::time::sleep(opts.lookup_spacing).await;
                    }
                    if let Some(m) = within(CALL_TIMEOUT, "containers.get", client.lookup(&id)).await? {
                        found = Some(m);
                        break;
                    }
                }
                let took_us = t.elapsed().as_micros() as u64;
                metrics.lookup_answered(took_us);
                debug!(container = %id, found = found.is_some(), took_us, "containerd lookup");
                let update = match found {
                    Some(m) => Update::Upsert(Arc::new(m)),
                    None => Update::NotFound(id),
                };
                if updates.send(update).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_client::{
        events::{ContainerCreate, ContainerDelete, TaskExit, TaskStart},
        types::Envelope,
    };

    fn env<M: Message>(topic: &str, m: &M) -> Envelope {
        Envelope {
            timestamp: None,
            namespace: "k8s.io".into(),
            topic: topic.into(),
            event: Some(prost_types::Any {
                type_url: String::new(),
                value: m.encode_to_vec(),
            }),
        }
    }

    #[test]
    fn event_topics() {
        let create = ContainerCreate {
            id: "c1".into(),
            ..Default::default()
        };
        assert_eq!(
            topic(&env("/containers/create", &create)),
            Topic::Refresh("c1".into())
        );
        let start = TaskStart {
            container_id: "c2".into(),
            pid: 7,
        };
        assert_eq!(
            topic(&env("/tasks/start", &start)),
            Topic::Refresh("c2".into())
        );
        let del = ContainerDelete { id: "c3".into() };
        assert_eq!(
            topic(&env("/containers/delete", &del)),
            Topic::Deleted("c3".into())
        );
        assert_eq!(topic(&env("/tasks/exit", &del)), Topic::Ignore);
        let init = TaskExit {
            container_id: "c4".into(),
            id: "c4".into(),
            pid: 9,
            exit_status: 137,
            exited_at: None,
        };
        assert_eq!(
            topic(&env("/tasks/exit", &init)),
            Topic::Exited {
                id: "c4".into(),
                exit_code: 137
            }
        );
        let exec = TaskExit {
            id: "exec-1".into(),
            ..init
        };
        assert_eq!(
            topic(&env("/tasks/exit", &exec)),
            Topic::Ignore,
            "an exec's exit"
        );
        let mut garbage = env("/containers/delete", &del);
        garbage.event.as_mut().unwrap().value = vec![0xff, 0xff, 0xff];
        assert_eq!(topic(&garbage), Topic::Ignore);
    }

    #[test]
    fn only_stopped_tasks_give_an_exit_status() {
        use containerd_client::types::v1::{Process, Status};
        let task = |id: &str, status: Status, exit_status| Process {
            id: id.into(),
            status: status as i32,
            exit_status,
            ..Process::default()
        };
        let got = stopped_of(
            vec![
                task("run", Status::Running, 0),
                task("done", Status::Stopped, 3),
                task("new", Status::Created, 0),
            ],
            Status::Stopped as i32,
        );
        assert_eq!(got, HashMap::from([("done".to_owned(), 3)]));
    }

    #[test]
    fn container_record_to_meta() {
        let spec = br#"{"process":{"user":{"uid":1000,"gid":1000},"capabilities":{"effective":["CAP_KILL"]}},
                        "linux":{"namespaces":[{"type":"network"},{"type":"pid"},{"type":"ipc"}]}}"#;
        let c = Container {
            id: "abc".into(),
            labels: [
                (meta::LABEL_POD_NAME.to_string(), "p".to_string()),
                (meta::LABEL_POD_UID.to_string(), "u".to_string()),
                (meta::LABEL_CONTAINER_NAME.to_string(), "app".to_string()),
            ]
            .into_iter()
            .collect(),
            image: "example/app:1".into(),
            runtime: Some(containerd_client::services::v1::container::Runtime {
                name: "io.containerd.runc.v2".into(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: spec.to_vec(),
            }),
            created_at: Some(prost_types::Timestamp {
                seconds: 2,
                nanos: 5,
            }),
            ..Default::default()
        };
        let m = meta_of(c, "k8s.io", Image::default());
        assert_eq!((m.id.as_str(), m.name.as_str()), ("abc", "app"));
        assert_eq!(m.oci_runtime, "io.containerd.runc.v2");
        assert_eq!(m.created, Some(crate::clock::Timestamp(2_000_000_005)));
        assert_eq!(m.pod.as_ref().map(|p| p.uid.as_str()), Some("u"));
        let p = m.posture.unwrap();
        assert_eq!((p.uid, p.host_network, p.privileged), (1000, false, false));
    }
}
