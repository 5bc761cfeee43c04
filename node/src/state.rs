//! What the node's services and jobs share: a handle passed as `Arc<NodeState>`.

use std::sync::Arc;

use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::mailbox::Mailbox;
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::registry::JobTable;
use crate::scoring::ScoreCache;
use crate::store::Store;
use crate::tls::Identity;

/// Everything the node's services and jobs share.
pub struct NodeState {
    /// The configuration in force (its datasets, policy and scoring clients can be read
    /// again without a restart: see [`NodeState::reload`]).
    config: std::sync::RwLock<Arc<NodeConfig>>,
    /// The embedded store.
    pub store: Store,
    /// Inboxes of open jobs.
    pub mailbox: Mailbox,
    /// Clients of the peers.
    pub peers: Peers,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Scoring indexes and rate-limit buckets.
    pub scores: ScoreCache,
    /// The live jobs.
    pub jobs: JobTable,
    /// This party's workers and the PSI work waiting for them.
    pub(crate) workers: crate::workers::Workers,
    /// The node's tokio runtime, for the network calls of blocking job threads.
    pub(crate) runtime: tokio::runtime::Handle,
    /// Which CA vouches for whom (peers with their own PKI, operators and clients).
    pub(crate) identity: Identity,
    /// Set once shutdown begins: no new job starts.
    pub(crate) shutting_down: std::sync::atomic::AtomicBool,
    /// Proposals being decided at once (they are decided one at a time anyway): a flood of
    /// them waits as futures instead of taking a blocking thread each.
    pub(crate) deciding: tokio::sync::Semaphore,
    /// When each throttled audit record (a scoring client's refusals, a peer's anchor
    /// conflicts) was last written: one a minute per key, not one per call.
    pub(crate) refusal_audits:
        std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl NodeState {
    /// The configuration in force. A job or a call works with the one it started with.
    pub fn config(&self) -> Arc<NodeConfig> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the configuration file again and puts its `datasets`, `policy` and `scoring`
    /// in force, checked as at start-up, under the lock that proposals are decided under (a
    /// decision sees one configuration). Every other key must be as running (it takes a restart): a file that changes
    /// one, or does not load, leaves the running configuration in force, and says why.
    /// Returns the keys that changed; a change is audited.
    pub fn reload(&self) -> Result<Vec<&'static str>, NodeError> {
        let _one_at_a_time = self.jobs.admission();
        let running = self.config();
        let new = NodeConfig::load(&running.source)?;
        let changed = running.changes_to(&new).map_err(|key| NodeError::Config {
            path: running.source.clone(),
            reason: format!(
                "{key} differs from the running configuration and takes a restart; the \
                 running configuration stays in force"
            ),
        })?;
        if changed.is_empty() {
            return Ok(changed);
        }
        crate::audit::append(
            &self.store,
            "config.reloaded",
            "",
            "",
            serde_json::json!({ "changed": changed }),
        )?;
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        if changed.contains(&"datasets") {
            self.scores.forget_indexes();
        }
        tracing::info!(?changed, "configuration read again");
        Ok(changed)
    }

    pub(crate) fn new(
        config: NodeConfig,
        store: Store,
        identity: Identity,
        peers: Peers,
        metrics: Arc<Metrics>,
        runtime: tokio::runtime::Handle,
    ) -> NodeState {
        let max_unread = config.federation.max_buffered_bytes;
        NodeState {
            config: std::sync::RwLock::new(Arc::new(config)),
            store,
            mailbox: Mailbox::new(max_unread),
            peers,
            metrics: metrics.clone(),
            scores: ScoreCache::default(),
            jobs: JobTable::default(),
            workers: crate::workers::Workers::new(metrics.clone()),
            runtime,
            identity,
            shutting_down: Default::default(),
            deciding: tokio::sync::Semaphore::new(2),
            refusal_audits: Default::default(),
        }
    }
}
