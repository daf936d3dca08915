//! Starting a node in-process and talking to it: [`Node::start`] spawns the
//! driver (and the local API) on the current tokio runtime and returns a
//! [`NodeHandle`], a cheap clonable handle whose async methods send commands
//! to the driver task.

use crate::config::Config;
use crate::datadir::{store_error, DataDir, STORE_FILE};
use crate::driver::{now_ms, Command, Driver, DriverParts, NodeStatus, PeerInfo};
use crate::error::NodeError;
use crate::names::Names;
use crate::views::{lock, SentText, SharedNames, Ux};
use crate::web::WebAuth;
use crate::{api, swarm, types};
use libp2p::{Multiaddr, PeerId};
use mmls_core::devices::UserKey;
use mmls_core::{
    Delivered, Event, ExportReport, Id32, ImportReport, MemberId, MmlsError, Participant, Profile,
    UniverseStatus,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::Instrument;

/// Entry point: `Node::start(config)`.
pub struct Node;

impl Node {
    /// Opens the data dir and the store, builds the swarm, binds the API
    /// (refusing a non-loopback address unless `allow_remote_api`), and
    /// spawns the node on the current tokio runtime.
    pub async fn start(config: Config) -> Result<NodeHandle, NodeError> {
        let dd = DataDir::open(&config.data_dir)?;
        let secret = dd.identity_secret()?;
        let identity = dd.identity()?;
        let key = swarm::keypair(&secret)?;
        drop(secret);
        let info = dd.info()?;
        let member = identity.member_id();
        let peer_id = key.public().to_peer_id();
        if peer_id.to_string() != member.to_string() {
            return Err(NodeError::Network(format!(
                "identity mismatch: PeerId {peer_id} vs member {member}"
            )));
        }

        // The API socket first: a refused or busy address must not leave a
        // half-started node behind.
        let api_listener = match config.api_addr {
            Some(addr) => {
                if !addr.ip().is_loopback() && !config.allow_remote_api {
                    return Err(NodeError::RemoteApiRefused(addr));
                }
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| NodeError::ApiBind { addr, source })?;
                Some(l)
            }
            None => None,
        };
        let store = dd.open_store()?;
        // After the store's lock: a second process refused on this data
        // dir must not replace the running node's token.
        let token = dd.rotate_api_token()?;
        let (participant, startup) =
            Participant::open(identity, store, config.engine.clone(), now_ms())
                .map_err(|e| store_error(&dd.file(STORE_FILE), e))?;

        let meter = crate::meter::Meter::default();
        let mut swarm = swarm::build_metered(key, &config, &meter)?;
        for a in &config.listen {
            swarm
                .listen_on(a.clone())
                .map_err(|e| NodeError::Network(format!("cannot listen on {a}: {e}")))?;
        }

        let (cmd_tx, cmd_rx) = mpsc::channel::<Command>(config.limits.command_queue);
        let (events, _) = broadcast::channel(config.limits.event_buffer);
        let (listeners_tx, listeners_rx) = watch::channel(0usize);
        let (done_tx, done_rx) = watch::channel(false);
        let (api_stop_tx, api_stop_rx) = watch::channel(false);
        let names: SharedNames = Arc::new(std::sync::Mutex::new(Names::load(dd.path())));
        let (sent_tx, _) = broadcast::channel(config.limits.event_buffer);
        let ux = Ux::new(
            dd.path(),
            names.clone(),
            config.announce_name,
            sent_tx.clone(),
        );
        let driver = Driver::new(DriverParts {
            ux,
            swarm,
            meter,
            participant,
            cfg: config.clone(),
            name: info.name.clone(),
            events: events.clone(),
            listeners_ready: listeners_tx,
        });

        let api_addr = match &api_listener {
            Some(l) => Some(l.local_addr().map_err(|e| NodeError::io(dd.path(), e))?),
            None => None,
        };
        let handle = NodeHandle {
            inner: Arc::new(Inner {
                cmd: cmd_tx,
                events,
                member,
                peer_id,
                name: info.name,
                api_addr,
                data_dir: config.data_dir.clone(),
                key_package_wait: config.timing.key_package_wait,
                listen_count: config.listen.len(),
                listeners: listeners_rx,
                done: done_rx,
                names,
                sent: sent_tx,
                web: Arc::new(WebAuth::new()),
            }),
        };

        let span = tracing::info_span!("node", name = %handle.inner.name);
        let driver_task = tokio::spawn(driver.run(cmd_rx, startup).instrument(span));
        let api_task = match api_listener {
            Some(l) => {
                if let Some(addr) = api_addr {
                    dd.write_api_addr(addr)?;
                    tracing::info!(%addr, "local API listening");
                }
                let state = api::ApiState::new(
                    handle.clone(),
                    token,
                    api_stop_rx,
                    config.limits.max_api_body,
                );
                Some(tokio::spawn(api::serve(l, state)))
            }
            None => None,
        };
        // Supervisor: when the driver ends, stop the API, remove api.addr.
        tokio::spawn(async move {
            if let Err(e) = driver_task.await {
                tracing::error!(error = %e, "driver task failed");
            }
            let _ = api_stop_tx.send(true);
            if let Some(t) = api_task {
                let abort = t.abort_handle();
                if tokio::time::timeout(Duration::from_secs(3), t)
                    .await
                    .is_err()
                {
                    abort.abort();
                }
                dd.remove_api_addr();
            }
            let _ = done_tx.send(true);
        });
        Ok(handle)
    }
}

/// Runs a node until SIGINT/SIGTERM or a shutdown command (the CLI's
/// `mmls run`).
pub async fn run(config: Config) -> Result<(), NodeError> {
    let h = Node::start(config).await?;
    tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("signal received: shutting down");
            h.shutdown().await;
        }
        _ = h.wait() => {}
    }
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM: what stops a foreground node.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

struct Inner {
    cmd: mpsc::Sender<Command>,
    events: broadcast::Sender<Event>,
    member: MemberId,
    peer_id: PeerId,
    name: String,
    api_addr: Option<SocketAddr>,
    data_dir: PathBuf,
    key_package_wait: Duration,
    listen_count: usize,
    listeners: watch::Receiver<usize>,
    done: watch::Receiver<bool>,
    names: SharedNames,
    sent: broadcast::Sender<SentText>,
    web: Arc<WebAuth>,
}

/// A handle to a running node. Clone it freely; call [`NodeHandle::shutdown`]
/// to stop the node (dropping handles does not stop it while its API runs).
#[derive(Clone)]
pub struct NodeHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("member", &self.inner.member)
            .finish()
    }
}

const RETRY_EVERY: Duration = Duration::from_millis(200);

impl NodeHandle {
    /// Runs `f` on the driver task and returns its result.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Driver) -> T + Send + 'static,
    ) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        let job: Command = Box::new(move |d: &mut Driver| {
            let v = f(d);
            d.reply_when_durable(Box::new(move || {
                let _ = tx.send(v);
            }));
        });
        self.inner
            .cmd
            .send(job)
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Our member id (= PeerId, as the engine writes it).
    pub fn member_id(&self) -> MemberId {
        self.inner.member.clone()
    }

    pub fn peer_id(&self) -> PeerId {
        self.inner.peer_id
    }

    /// The name from `node.json`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn data_dir(&self) -> &std::path::Path {
        &self.inner.data_dir
    }

    /// The bound API address (None if the API is off).
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.inner.api_addr
    }

    /// The addresses we listen on (waits up to 5 s for every configured
    /// listener to be up).
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NodeError> {
        let mut rx = self.inner.listeners.clone();
        let want = self.inner.listen_count;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while *rx.borrow_and_update() < want {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        self.call(|d| d.cmd_listen_addrs()).await
    }

    /// Dials a peer; the address is also kept and re-dialled whenever the
    /// peer is not connected.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NodeError> {
        self.call(move |d| d.cmd_dial(addr)).await?
    }

    /// Creates a universe with `members` (us included implicitly), waiting
    /// up to `Timing::key_package_wait` for missing KeyPackages.
    pub async fn create_universe(
        &self,
        name: &str,
        members: &[MemberId],
        profile: Profile,
    ) -> Result<Id32, NodeError> {
        self.create_universe_with_admins(name, members, &[], profile)
            .await
    }

    pub async fn create_universe_with_admins(
        &self,
        name: &str,
        members: &[MemberId],
        admins: &[MemberId],
        profile: Profile,
    ) -> Result<Id32, NodeError> {
        self.create_federated_universe(name, members, admins, profile, vec![])
            .await
    }

    /// Creates a federated universe: `anchors` lists each domain and the
    /// certificate that vouches for its members.
    pub async fn create_federated_universe(
        &self,
        name: &str,
        members: &[MemberId],
        admins: &[MemberId],
        profile: Profile,
        anchors: Vec<mmls_core::federation::DomainAnchor>,
    ) -> Result<Id32, NodeError> {
        self.create_universe_with(
            name,
            members,
            admins,
            profile,
            anchors,
            mmls_core::ciphersuites::DEFAULT_ACCEPTED,
        )
        .await
    }

    /// Creates a universe accepting the ciphersuites `suites` (code points,
    /// preferred first); our send group takes our preferred one of them.
    pub async fn create_universe_with(
        &self,
        name: &str,
        members: &[MemberId],
        admins: &[MemberId],
        profile: Profile,
        anchors: Vec<mmls_core::federation::DomainAnchor>,
        suites: &[u16],
    ) -> Result<Id32, NodeError> {
        let deadline = Instant::now() + self.inner.key_package_wait;
        loop {
            let (n, m, a, x, s) = (
                name.to_string(),
                members.to_vec(),
                admins.to_vec(),
                anchors.clone(),
                suites.to_vec(),
            );
            match self
                .call(move |d| d.cmd_create_universe(&n, &m, &a, profile, x, &s))
                .await?
            {
                Err(NodeError::Engine(MmlsError::MissingKeyPackage(_)))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(RETRY_EVERY).await
                }
                r => return r,
            }
        }
    }

    /// Adds a member (admins only), waiting for its KeyPackage like
    /// `create_universe`.
    pub async fn add_member(&self, universe: Id32, member: &MemberId) -> Result<(), NodeError> {
        let deadline = Instant::now() + self.inner.key_package_wait;
        loop {
            let m = member.clone();
            match self.call(move |d| d.cmd_add_member(&universe, &m)).await? {
                Err(NodeError::Engine(MmlsError::MissingKeyPackage(_)))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(RETRY_EVERY).await
                }
                r => return r,
            }
        }
    }

    pub async fn remove_member(&self, universe: Id32, member: &MemberId) -> Result<(), NodeError> {
        let m = member.clone();
        self.call(move |d| d.cmd_remove_member(&universe, &m))
            .await?
    }

    /// Sends a message; returns its per-sender sequence number.
    pub async fn send(&self, universe: Id32, body: impl AsRef<[u8]>) -> Result<u64, NodeError> {
        let b = body.as_ref().to_vec();
        self.call(move |d| d.cmd_send(&universe, &b)).await?
    }

    /// Delivered messages after `after` (a cursor), oldest first.
    pub async fn messages(
        &self,
        universe: Id32,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Delivered>, NodeError> {
        self.call(move |d| d.cmd_messages(&universe, after, limit))
            .await?
    }

    /// Our single-use KeyPackages (fresh, handed out) and those handed to
    /// us.
    pub async fn key_package_pool(&self) -> Result<mmls_core::KpPoolStatus, NodeError> {
        self.call(|d| d.p.key_package_pool()).await
    }

    pub async fn status(&self) -> Result<NodeStatus, NodeError> {
        self.call(|d| d.cmd_status()).await
    }

    pub async fn universes(&self) -> Result<Vec<UniverseStatus>, NodeError> {
        self.call(|d| d.cmd_universes()).await
    }

    pub async fn universe_status(&self, universe: Id32) -> Result<UniverseStatus, NodeError> {
        self.call(move |d| d.cmd_universe_status(&universe)).await?
    }

    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NodeError> {
        self.call(|d| d.cmd_peers()).await
    }

    /// Renews our certificate: every universe gets an MMLS update whose
    /// leaves carry it, then the data dir keeps it for the next start.
    /// Refused, with nothing changed, if it does not certify our key or a
    /// federated universe we are in would not accept it.
    pub async fn renew_certificate(&self, chain_pem: Vec<u8>) -> Result<(), NodeError> {
        let chain = mmls_core::federation::chain_from_pem(&chain_pem).map_err(MmlsError::from)?;
        self.call(move |d| d.cmd_renew_certificate(chain)).await??;
        DataDir::open(self.data_dir())?.set_certificate(&chain_pem)?;
        Ok(())
    }

    /// Admin: adds a domain or replaces its anchor (DER).
    pub async fn set_anchor(
        &self,
        universe: Id32,
        domain: String,
        cert: Vec<u8>,
    ) -> Result<(), NodeError> {
        self.call(move |d| d.cmd_set_anchor(&universe, &domain, &cert))
            .await?
    }

    /// Forces an MMLS update (commit with a fresh path) in our send group.
    pub async fn update(&self, universe: Id32) -> Result<(), NodeError> {
        self.call(move |d| d.cmd_update(&universe)).await?
    }

    /// Asks to be re-added: to the stale groups of a universe we know, or to
    /// every group of a universe this store lost.
    pub async fn rejoin(&self, universe: Id32) -> Result<(), NodeError> {
        self.call(move |d| d.cmd_rejoin(&universe)).await?
    }

    /// Links this device to a user: the one whose key is given (a device
    /// joining its user), else the user key this device holds, made now if
    /// it holds none (the user's first device). Signed by the user key and
    /// our identity key; every universe where another device of the user
    /// is a member then takes this one in.
    pub async fn link_device(&self, key: Option<UserKey>) -> Result<types::Devices, NodeError> {
        let dir = DataDir::open(self.data_dir())?;
        let held = dir.user_key()?;
        let user = match (key, held) {
            (Some(k), Some(h)) if k.user_id() != h.user_id() => {
                return Err(NodeError::OtherUser(h.user_id()))
            }
            (Some(k), None) => {
                dir.set_user_key(&k)?;
                k
            }
            (_, Some(h)) => h,
            (None, None) => {
                let k = UserKey::generate();
                dir.set_user_key(&k)?;
                k
            }
        };
        let at = self.next_statement_time(self.member_id()).await?;
        let signed = user.link(&dir.identity()?, at);
        self.call(move |d| d.cmd_publish_device_link(signed))
            .await??;
        self.devices().await
    }

    /// The user whose key this device holds disowns `device` (another of
    /// its devices, or this one): it is removed from every universe.
    pub async fn unlink_device(&self, device: MemberId) -> Result<types::Devices, NodeError> {
        let dir = DataDir::open(self.data_dir())?;
        let user = dir.user_key()?.ok_or(NodeError::NoUserKey)?;
        let at = self.next_statement_time(device.clone()).await?;
        let signed = user.unlink(&device, at);
        self.call(move |d| d.cmd_publish_device_link(signed))
            .await??;
        self.devices().await
    }

    /// The time for a new statement about `device`: now, or just after the
    /// newest one we hold (two in one millisecond, or a clock that went
    /// back, must not make the second look stale).
    async fn next_statement_time(&self, device: MemberId) -> Result<u64, NodeError> {
        let prev = self
            .call(move |d| {
                d.p.devices()
                    .into_iter()
                    .find(|i| i.device == device)
                    .map(|i| i.at)
            })
            .await?;
        Ok(prev.map_or(now_ms(), |p| now_ms().max(p.saturating_add(1))))
    }

    /// This device's user and every device heard of.
    pub async fn devices(&self) -> Result<types::Devices, NodeError> {
        self.call(|d| {
            let me = d.p.me().clone();
            types::Devices {
                me: me.to_string(),
                user: d.p.user_of(&me),
                devices: d
                    .p
                    .devices()
                    .into_iter()
                    .map(|i| types::Device {
                        user: i.user,
                        device: i.device.to_string(),
                        linked: i.linked,
                        at: i.at,
                    })
                    .collect(),
            }
        })
        .await
    }

    /// The linked devices of each of `users`; a user none of whose devices
    /// we have heard of is an error (a mistyped id must not silently make a
    /// smaller universe).
    pub async fn devices_of_users(&self, users: Vec<String>) -> Result<Vec<MemberId>, NodeError> {
        self.call(move |d| {
            let mut out = vec![];
            for u in &users {
                let devs = d.p.devices_of(u);
                if devs.is_empty() {
                    return Err(NodeError::Engine(MmlsError::UnknownUser(u.clone())));
                }
                out.extend(devs);
            }
            Ok(out)
        })
        .await?
    }

    /// Leaves a universe (every member removes us).
    pub async fn leave(&self, universe: Id32) -> Result<(), NodeError> {
        self.call(move |d| d.cmd_leave(&universe)).await?
    }

    /// Drops the local state of a universe we are not a member of.
    pub async fn forget(&self, universe: Id32) -> Result<(), NodeError> {
        self.call(move |d| d.cmd_forget(&universe)).await?
    }

    /// Sneakernet: a bundle file of `universe` (only what `since` is known
    /// to lack, if given), or an introduction (our KeyPackage) when None.
    pub async fn bundle_export(
        &self,
        universe: Option<Id32>,
        since: Option<MemberId>,
    ) -> Result<(Vec<u8>, ExportReport), NodeError> {
        self.call(move |d| d.cmd_bundle_export(universe.as_ref(), since.as_ref()))
            .await?
    }

    /// Feeds a bundle file to the engine (the checks of a fetch answer).
    pub async fn bundle_import(&self, bytes: Vec<u8>) -> Result<ImportReport, NodeError> {
        self.call(move |d| d.cmd_bundle_import(&bytes)).await?
    }

    /// Disconnects a peer and refuses it until [`NodeHandle::unblock_all`].
    pub async fn block_peer(&self, peer: PeerId) -> Result<(), NodeError> {
        self.call(move |d| d.cmd_block(peer)).await
    }

    /// Lifts every block and re-dials the known addresses.
    pub async fn unblock_all(&self) -> Result<(), NodeError> {
        self.call(|d| d.cmd_unblock_all()).await
    }

    /// The last `limit` texts of a universe, ours included, in order, with
    /// names and receipts.
    pub async fn conversation(
        &self,
        universe: Id32,
        limit: usize,
    ) -> Result<Vec<types::ConversationEntry>, NodeError> {
        self.call(move |d| d.cmd_conversation(&universe, limit))
            .await?
    }

    /// The members of a universe as this node sees them.
    pub async fn members(&self, universe: Id32) -> Result<Vec<types::MemberView>, NodeError> {
        self.call(move |d| d.cmd_members(&universe)).await?
    }

    /// The display name of a member here (nickname, else announced).
    pub fn display_name(&self, m: &MemberId) -> Option<String> {
        if *m == self.inner.member {
            return Some(self.inner.name.clone());
        }
        lock(&self.inner.names).display(m)
    }

    /// Members with a name (announced or nickname).
    pub fn contacts(&self) -> Vec<types::Contact> {
        lock(&self.inner.names)
            .all()
            .into_iter()
            .map(|(member, i)| types::Contact {
                member,
                name: i.display,
                nickname: i.nickname,
                announced: i.announced,
            })
            .collect()
    }

    /// Sets (or clears, None) the local nickname of a member.
    pub fn set_nickname(&self, m: &MemberId, name: Option<&str>) -> Result<(), NodeError> {
        lock(&self.inner.names).set_nickname(m, name)
    }

    /// Our texts as they are sent (from any client).
    pub fn subscribe_sent(&self) -> broadcast::Receiver<SentText> {
        self.inner.sent.subscribe()
    }

    /// A one-time login link for the web app (None without an API).
    pub fn web_login_url(&self) -> Option<String> {
        let addr = self.inner.api_addr?;
        Some(self.inner.web.login_url(addr))
    }

    pub(crate) fn web_auth(&self) -> Arc<WebAuth> {
        self.inner.web.clone()
    }

    /// Every engine event from now on (a lagging receiver gets
    /// `RecvError::Lagged`; read the messages endpoint to catch up).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Asks the node to stop without waiting for it.
    pub async fn request_stop(&self) {
        let job: Command = Box::new(|d: &mut Driver| d.stop = true);
        let _ = self.inner.cmd.send(job).await;
    }

    /// Stops the node and waits until it has (store closed, API down,
    /// api.addr removed).
    pub async fn shutdown(&self) {
        self.request_stop().await;
        self.wait().await;
    }

    /// Waits until the node has stopped.
    pub async fn wait(&self) {
        let mut rx = self.inner.done.clone();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                break;
            }
        }
    }

    /// Whether the node has stopped.
    pub fn is_stopped(&self) -> bool {
        *self.inner.done.borrow()
    }
}
