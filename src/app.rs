//! Builds the application: configuration → store → services → router, and
//! serves it until SIGTERM or SIGINT.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::audit::checkpoint::Checkpoints;
use crate::audit::AuditLog;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::keys::{load_master_key, KeyRing, Sealer, BROKER};
use crate::licenses::Library;
use crate::oauth::client_auth::Clients;
use crate::oauth::AccessTokens;
use crate::store::Store;
use crate::telemetry::Metrics;

/// Everything a request handler may call.
pub struct Services {
    /// Effective configuration.
    pub config: Config,
    /// Database.
    pub store: Store,
    /// Signing keys.
    pub keys: Arc<KeyRing>,
    /// The audit log.
    pub audit: Arc<AuditLog>,
    /// Signed checkpoints and proofs over the audit log.
    pub checkpoints: Checkpoints,
    /// The Cedar policies in force.
    pub policies: crate::policy::Policies,
    /// The license library.
    pub library: Library,
    /// OAuth clients.
    pub clients: Clients,
    /// Access tokens.
    pub tokens: AccessTokens,
    /// Metrics.
    pub metrics: Metrics,
    /// Keys derived from the master key (sealing, keyed digests, CSRF tokens).
    pub sealer: Arc<Sealer>,
    /// Working days, for objection deadlines.
    pub calendar: crate::calendar::WorkingCalendar,
    /// Rate limits of this node.
    pub limits: Arc<crate::limits::RateLimits>,
}

/// Shared state of the HTTP handlers.
pub type AppState = Arc<Services>;

/// A built application, ready to serve.
pub struct App {
    /// Its services.
    pub services: AppState,
}

impl App {
    /// Connects to the database, applies migrations and builds the services.
    pub async fn build(config: Config) -> Result<Self> {
        Self::build_with(config, true).await
    }

    /// Builds the application; with `policies_required` false (audit tools,
    /// which a regulator must be able to run whatever state the policy files
    /// are in) invalid policies are reported and nothing is allowed instead.
    pub async fn build_with(config: Config, policies_required: bool) -> Result<Self> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            Error::internal(format!("cannot create {}: {e}", config.data_dir.display()))
        })?;
        let master = load_master_key(config.master_key.as_deref(), &config.data_dir)?;
        let sealer = Arc::new(Sealer::new(&master)?);
        let store = Store::connect(&config).await?;
        store.migrate().await?;
        let keys = Arc::new(KeyRing::new(
            store.clone(),
            sealer.clone(),
            Duration::from_secs(config.key_refresh),
        ));
        // Make sure the broker has a signing key before the first request.
        keys.active(BROKER).await?;
        // Invalid policies stop the start: nothing may run on rules that do not check.
        let policies = match crate::policy::Policies::load(&config.policy_dir) {
            Ok(p) => p,
            Err(e) if policies_required => {
                return Err(Error::BadRequest(format!("invalid policies: {e}")))
            }
            Err(e) => {
                tracing::warn!(error = %e, "invalid policies; every decision will be a refusal");
                crate::policy::Policies::deny_all(&config.policy_dir).map_err(|e| {
                    Error::internal(format!("cannot build an empty policy set: {e}"))
                })?
            }
        };
        {
            let loaded = policies.current();
            tracing::info!(
                policies = loaded.len(),
                sha256 = loaded.digest(),
                dir = %config.policy_dir.display(),
                "policies loaded"
            );
        }
        let limits = Arc::new(crate::limits::RateLimits::new(&config));
        let metrics = Metrics::default();
        let audit = AuditLog::start(store.clone(), &metrics)?;
        let services = Services {
            library: Library::new(
                store.clone(),
                sealer.clone(),
                keys.clone(),
                audit.clone(),
                config.public_url.clone(),
            ),
            clients: Clients::new(
                store.clone(),
                sealer.clone(),
                audit.clone(),
                &config.public_url,
                limits.clone(),
            ),
            limits,
            sealer,
            calendar: crate::calendar::WorkingCalendar::parse(
                &config.holidays,
                &config.working_weekends,
            )?,
            checkpoints: Checkpoints::new(store.clone(), keys.clone(), config.public_url.clone()),
            policies,
            audit,
            tokens: AccessTokens::new(
                keys.clone(),
                config.public_url.clone(),
                config.access_token_ttl,
            ),
            metrics,
            keys,
            store,
            config,
        };
        Ok(App {
            services: Arc::new(services),
        })
    }

    /// Reloads the policies from disk (admin API, SIGHUP); the old set stays
    /// in force if the new one is invalid. Every attempt is audited.
    pub async fn reload_policies(
        services: &Services,
        actor: &crate::audit::Actor,
    ) -> Result<usize> {
        use crate::audit::Outcome;
        match services.policies.reload() {
            Ok(n) => {
                // Published, so that every node puts the same set in force.
                let engine = services.policies.current();
                let files = serde_json::to_string(&engine.sources()).map_err(Error::internal)?;
                let generation = services
                    .store
                    .publish_policy_set(
                        engine.digest(),
                        &files,
                        &crate::store::timestamp(crate::store::now()),
                        &actor.id,
                    )
                    .await?;
                services.policies.set_generation(generation);
                services
                    .audit
                    .record(
                        actor
                            .event("policy.loaded", Outcome::Success)
                            .reason(format!(
                                "{n} policies from {} (sha256 {}), published as generation {generation}",
                                services.policies.dir().display(),
                                engine.digest()
                            )),
                    )
                    .await?;
                tracing::info!(policies = n, generation, "policies reloaded and published");
                Ok(n)
            }
            Err(e) => {
                services
                    .audit
                    .record(
                        actor
                            .event("policy.loaded", Outcome::Refused)
                            .reason(e.to_string()),
                    )
                    .await?;
                tracing::error!(error = %e, "policy reload refused; the previous policies stay in force");
                Err(Error::Invalid {
                    detail: format!("the policies were not reloaded: {e}"),
                    errors: Vec::new(),
                })
            }
        }
    }

    /// The HTTP router.
    pub fn router(&self) -> axum::Router {
        crate::http::router(self.services.clone())
    }

    /// Serves on an already bound listener until `shutdown` resolves, then
    /// finishes in-flight requests and closes the database.
    pub async fn serve_on(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let router = self.router();
        // Nonces for the signatures start being made in idle time now, so
        // that the first requests find them ready (src/keys/nonces.rs).
        crate::keys::nonces::pool();
        // A published policy set wins over this node's files from the start.
        sync_policies(&self.services).await?;
        let policy_sync = tokio::spawn(policy_sync(self.services.clone()));
        let maintenance = tokio::spawn(maintenance(self.services.clone()));
        let indexer = tokio::spawn(audit_indexer(self.services.clone()));
        let hangups = tokio::spawn(reload_on_sighup(self.services.clone()));
        let wal = tokio::spawn(wal_checkpoints(self.services.clone()));
        let notifications = tokio::spawn(crate::notify::worker(self.services.clone()));
        let reminders = tokio::spawn(crate::notify::daily(self.services.clone()));
        // In-flight requests may finish, within the request timeout (after
        // which the timeout layer has answered them anyway) and a little more:
        // a client that keeps a connection open must not keep the node alive.
        let (stopping, mut stop_requested) = tokio::sync::watch::channel(false);
        let served = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stopping.send(true);
        })
        .into_future();
        let grace = Duration::from_secs(self.services.config.request_timeout + 5);
        let served = tokio::select! {
            served = served => served,
            _ = async {
                let _ = stop_requested.wait_for(|s| *s).await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(?grace, "in-flight requests did not finish in time; stopping without them");
                Ok(())
            }
        };
        maintenance.abort();
        indexer.abort();
        hangups.abort();
        policy_sync.abort();
        notifications.abort();
        wal.abort();
        reminders.abort();
        // Sign what the last requests appended, so the whole log is covered.
        // Neither this nor closing the pool (which waits for every connection
        // to come back) may wait for a database that does not answer.
        let db_wait = Duration::from_secs(2 * self.services.config.db_timeout);
        match tokio::time::timeout(db_wait, self.services.checkpoints.create()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "final audit checkpoint failed"),
            Err(_) => tracing::warn!("final audit checkpoint timed out"),
        }
        if tokio::time::timeout(db_wait, self.services.store.close())
            .await
            .is_err()
        {
            tracing::warn!("database connections still busy at shutdown; closed without them");
        }
        served.map_err(|e| Error::internal(format!("server error: {e}")))
    }

    /// Binds the configured address and serves until SIGTERM or SIGINT.
    pub async fn serve(self) -> Result<()> {
        let addr = self.services.config.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::internal(format!("cannot listen on {addr}: {e}")))?;
        tracing::info!(%addr, public_url = %self.services.config.public_url, "licensegate is listening");
        self.serve_on(listener, shutdown_signal()).await?;
        tracing::info!("licensegate stopped");
        Ok(())
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}

/// The runtime that serves requests, on `worker_threads` threads
/// ([`Config::worker_threads`](crate::Config)); the benchmarks run the
/// server on the same.
pub fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .enable_all()
        .build()
}

/// Periodic housekeeping: sign audit checkpoints, and forget client-assertion
/// ids that can no longer be replayed.
async fn maintenance(services: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(services.config.checkpoint_interval));
    let mut rounds: u64 = 0;
    loop {
        tick.tick().await;
        if let Err(e) = services.checkpoints.create().await {
            tracing::warn!(error = %e, "signing an audit checkpoint failed");
        }
        rounds += 1;
        if rounds % 6 == 0 {
            let now = crate::store::now().unix_timestamp();
            if let Err(e) = services.store.prune_assertions(now).await {
                tracing::warn!(error = %e, "pruning used assertions failed");
            }
            if let Err(e) = services.store.prune_revocations(now).await {
                tracing::warn!(error = %e, "pruning revoked tokens failed");
            }
            if let Err(e) = services.store.prune_consent_flows(now).await {
                tracing::warn!(error = %e, "pruning expired codes, requests and sessions failed");
            }
            services.limits.prune();
        }
    }
}

/// Records indexed per transaction: large sorted batches touch each index
/// page once for many entries (measured on 300,000 records: 4,096 per batch
/// 49k records/s, 20,000 per batch 160k/s with the longest transaction 205 ms).
const INDEX_BATCH: i64 = 20_000;

/// Keeps the audit log's subject index (holder, license, actor, license type,
/// action) close behind the log, in large batches (searches scan whatever it
/// has not reached yet).
pub async fn audit_indexer(services: AppState) {
    loop {
        match services.store.index_audit_subjects(INDEX_BATCH).await {
            Ok(n) if n >= INDEX_BATCH => continue,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "indexing the audit log failed"),
        }
        tokio::time::sleep(INDEX_PAUSE).await;
    }
}

/// The indexer's pause once it has caught up. Short, so that each round is
/// small: rounds of 0.5 s at 10,000 retrievals/s indexed some 5,400 records
/// in 37-58 ms, and their writes, flushed to the disk together with the log's
/// commits, made the slowest commits of the retrieval benchmark (30-55 ms
/// where most take 1.5 ms). Every 100 ms: about 1,400 records in 12 ms
/// (at most 19 ms), for about a fifth more indexing work per record.
const INDEX_PAUSE: Duration = Duration::from_millis(100);

/// Checkpoints SQLite's WAL beside the writer, every
/// [`crate::store::WAL_CHECKPOINT_INTERVAL`].
pub async fn wal_checkpoints(services: AppState) {
    if let Err(e) = services.store.take_over_checkpoints().await {
        tracing::warn!(error = %e, "cannot take over WAL checkpoints; SQLite keeps doing them");
        return;
    }
    let mut tick = tokio::time::interval(crate::store::WAL_CHECKPOINT_INTERVAL);
    loop {
        tick.tick().await;
        if let Err(e) = services.store.checkpoint_wal().await {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
}

/// Puts the newest published policy set in force on this node, if it is not
/// already (a reload on any node publishes one). An invalid published set —
/// which a reload never publishes — leaves the current set in force.
pub async fn sync_policies(services: &Services) -> Result<()> {
    let Some((generation, digest)) = services.store.latest_policy_set().await? else {
        return Ok(());
    };
    if generation <= services.policies.generation() {
        return Ok(());
    }
    if services.policies.current().digest() != digest {
        let Some(files) = services.store.policy_set_files(generation).await? else {
            return Ok(());
        };
        let sources: crate::policy::engine::PolicySources =
            serde_json::from_str(&files).map_err(Error::internal)?;
        let engine = crate::policy::engine::PolicyEngine::from_sources(&sources)
            .map_err(|e| Error::internal(format!("published policy set {generation}: {e}")))?;
        services.policies.replace(Arc::new(engine));
        tracing::info!(generation, sha256 = %digest, "published policies put in force");
    }
    services.policies.set_generation(generation);
    Ok(())
}

/// Every second: the newest published policy set.
async fn policy_sync(services: Arc<Services>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = sync_policies(&services).await {
            tracing::warn!(error = %e, "cannot read the published policies");
        }
    }
}

/// SIGHUP reloads the policies without dropping requests.
async fn reload_on_sighup(services: AppState) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        let _ = App::reload_policies(&services, &crate::audit::Actor::system("sighup")).await;
    }
}
