//! Wiring of a running CDRS process: plugins, target registry, admin API,
//! consumer and partition workers, the plugin file watcher, and an orderly
//! stop.

use crate::admin::{self, AdminState};
use crate::capacity::{self, Registry};
use crate::config::Config;
use crate::control::Control;
use crate::dispatch::{Delivery, Dispatcher};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::plugin::slot::PluginManager;
use crate::plugin::Runtime;
use crate::reload::{self, ConfigReloader};
use crate::sink::kafka::DeadLetterSink;
use crate::source;
use crate::tls::{Clients, ServerTls};
use anyhow::Context;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running CDRS instance.
pub struct Daemon {
    /// Where the admin API listens (resolved if the config said port 0).
    pub admin_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub registry: Arc<Registry>,
    pub plugins: Arc<PluginManager>,
    pub reloader: Arc<ConfigReloader>,
    ready: Arc<AtomicBool>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
    admin: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    telemetry: Option<Arc<crate::telemetry::Telemetry>>,
}

impl Daemon {
    /// Loads plugins, binds the admin API, joins the consumer group and
    /// starts consuming. Returns once all of that succeeded. With
    /// `config_path`, that file is watched and reloaded as a diff.
    ///
    /// # Errors
    /// The Wasm runtime cannot start; a plugin fails to load (each named); the
    /// admin address cannot be bound; the dead-letter or group consumer cannot
    /// be created; the capacity topic cannot be read.
    pub async fn start(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<Daemon> {
        let metrics = Arc::new(Metrics::new());
        let runtime = Runtime::new(&config.plugins).context("failed to start the Wasm runtime")?;
        let plugins = {
            let (runtime, config, metrics) = (runtime.clone(), config.clone(), metrics.clone());
            tokio::task::spawn_blocking(move || PluginManager::load(runtime, &config, metrics))
                .await?
        }
        .map_err(|errs| {
            let list: Vec<String> = errs.iter().map(|e| format!("  - {e}")).collect();
            anyhow::anyhow!("failed to load plugins:\n{}", list.join("\n"))
        })?;
        let plugins = Arc::new(plugins);
        // The latest fleet deployments run before any record is read.
        let control = match config.control.topic() {
            Some(topic) => Some(
                Control::start(&config, plugins.clone())
                    .await
                    .with_context(|| format!("failed to read the control topic {topic:?}"))?,
            ),
            None => None,
        };
        let registry = Arc::new(Registry::new(
            config.capacity.clone(),
            &config.targets,
            metrics.clone(),
        ));
        let clients = Clients::new(&config.delivery, &config.targets, Some(metrics.clone()))
            .context("failed to set up TLS for the targets")?;
        let clients = Arc::new(ArcSwap::from_pointee(clients));
        let admin_tls = match &config.admin.tls {
            Some(t) => Some(Arc::new(
                ServerTls::new(t, Some(metrics.clone()))
                    .context("failed to set up TLS for the admin API")?,
            )),
            None => None,
        };
        let dispatch = Arc::new(Dispatcher::new(
            registry.clone(),
            Delivery::new(&config.delivery, clients.clone()),
            DeadLetterSink::new(
                &config.kafka.brokers,
                &config.kafka.dead_letter_topic,
                &config.kafka.options,
            )
            .context("failed to create the dead-letter producer")?,
            metrics.clone(),
            config.kafka.brokers.clone(),
            config.kafka.options.clone(),
        ));
        warm_up_target_producer(&dispatch, &config);
        let telemetry = crate::telemetry::Telemetry::new(&config.telemetry, &config.kafka.group_id)
            .context("failed to set up [telemetry]")?;
        if let Some(endpoint) = &config.telemetry.otlp_endpoint {
            tracing::info!(endpoint = %crate::redact::url(endpoint),
                sample_ratio = config.telemetry.sample_ratio, "tracing records with a traceparent");
        }
        let pipeline = Arc::new(
            Pipeline::new(plugins.clone(), dispatch.clone(), metrics.clone())
                .with_telemetry(telemetry.clone()),
        );
        // Keys gateways looked up: their moves when targets change.
        pipeline.routing.set_watch(
            config.admin.route_watch_ms,
            config.admin.route_watch_max_keys,
        );
        pipeline.routing.clone().publish_moves();
        let reloader = Arc::new(ConfigReloader::new(
            config_path,
            config.clone(),
            plugins.clone(),
            registry.clone(),
            dispatch.clone(),
            clients.clone(),
            admin_tls.clone(),
        ));

        let ready = Arc::new(AtomicBool::new(false));
        let partitions = source::Partitions::new(config.pipeline.prefetch_records);
        if config.admin.token.is_none() {
            tracing::warn!(listen = %config.admin.listen,
                "admin.token is not set: mutating admin endpoints are open to local clients");
        }
        let state = Arc::new(AdminState {
            registry: registry.clone(),
            metrics: metrics.clone(),
            ready: ready.clone(),
            access: admin::Access::from_config(&config.admin),
            uploads: Arc::new(tokio::sync::Semaphore::new(
                config.admin.max_concurrent_uploads,
            )),
            plugins: Some(plugins.clone()),
            reloader: Some(reloader.clone()),
            control: control.as_ref().map(|(c, _)| c.clone()),
            partitions: partitions.clone(),
            routing: Some(pipeline.routing.clone()),
            dispatch: Some(pipeline.dispatch.clone()),
            topics: config
                .kafka
                .topics
                .iter()
                .map(|t| Arc::from(t.as_str()))
                .collect(),
        });
        let listener = tokio::net::TcpListener::bind(&config.admin.listen)
            .await
            .with_context(|| format!("failed to bind admin.listen {:?}", config.admin.listen))?;
        let admin_addr = listener.local_addr()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let admin = {
            let (stop, cfg, metrics) = (shutdown_rx.clone(), config.admin.clone(), metrics.clone());
            let admin_tls = admin_tls.clone();
            let app = admin::router(state);
            tokio::spawn(async move {
                admin::serve(listener, app, &cfg, admin_tls, metrics, stop).await
            })
        };
        {
            // Streams never end by themselves: end them with the admin API.
            let (streams, mut stop) = (dispatch.streams.clone(), shutdown_rx.clone());
            tokio::spawn(async move {
                let _ = stop.wait_for(|s| *s).await;
                streams.close();
            });
        }
        tracing::info!(%admin_addr, tls = config.admin.tls.is_some(), "admin API listening");
        let refresher = tokio::spawn(registry.clone().run_refresher(shutdown_rx.clone()));
        let checks = tokio::spawn(capacity::health::run(
            registry.clone(),
            clients.clone(),
            shutdown_rx.clone(),
        ));
        let expiry = {
            let (r, mut stop) = (reloader.clone(), shutdown_rx.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(crate::tls::EXPIRY_CHECK_INTERVAL) => r.warn_expiring_tls(),
                        _ = stop.changed() => return,
                    }
                }
            })
        };
        let mut background = vec![refresher, checks, expiry];
        if let Some((control, reader)) = control {
            background.push(tokio::spawn(control.run(reader, shutdown_rx.clone())));
        }
        if let Some(topic) = &config.capacity.topic {
            let feed =
                capacity::topic::consumer(&config.kafka.brokers, &config.kafka.options, topic)
                    .with_context(|| format!("failed to read the capacity topic {topic:?}"))?;
            background.push(tokio::spawn(capacity::topic::run(
                feed,
                registry.clone(),
                shutdown_rx.clone(),
            )));
        }
        let watcher = {
            let (m, r, stop) = (plugins.clone(), reloader.clone(), shutdown_rx.clone());
            tokio::spawn(async move {
                if let Err(e) = reload::watch_files(m, r, stop).await {
                    tracing::error!(error = %e, "file watcher failed; config and plugin files are not watched");
                }
            })
        };
        let consumer = Arc::new(
            source::consumer(
                &config.kafka,
                &config.pipeline,
                ready.clone(),
                metrics.clone(),
                &partitions,
            )
            .context("failed to create the consumer")?,
        );
        tracing::info!(group = %config.kafka.group_id, topics = ?config.kafka.topics, "consuming");
        let task = tokio::spawn(source::run(
            consumer,
            pipeline,
            config.pipeline.clone(),
            shutdown_rx,
        ));
        Ok(Daemon {
            admin_addr,
            metrics,
            registry,
            plugins,
            reloader,
            ready,
            shutdown,
            task,
            admin,
            background: {
                background.push(watcher);
                background
            },
            telemetry,
        })
    }

    /// Whether the consumer has joined its group.
    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until the consumer joined its group, at most `timeout`.
    ///
    /// # Errors
    /// The consumer did not join its group within `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.is_ready() {
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("consumer did not join its group within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Reloads the config file (SIGHUP, `POST /v1/reload`).
    pub async fn reload(&self) -> reload::ReloadReport {
        let r = self.reloader.clone();
        tokio::task::spawn_blocking(move || crate::panic::contained(|| r.reload()))
            .await
            .unwrap_or_else(|e| reload::ReloadReport {
                at_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64),
                ok: false,
                changed: vec![],
                errors: vec![format!("reload task failed: {e}")],
            })
    }

    /// Asks the daemon to stop (returns at once).
    pub fn request_stop(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Stops consuming, drains, commits offsets, stops the admin API.
    ///
    /// # Errors
    /// The source task panicked, or committing the final offsets failed.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.request_stop();
        let result = self.task.await.context("source task panicked")?;
        let _ = self.admin.await;
        for b in self.background {
            let _ = b.await;
        }
        if let Some(t) = self.telemetry {
            // Blocks up to its export timeout: off the async workers.
            let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
        }
        result
    }
}

/// Creates the producer of `kafka://` targets now, when there are any, and
/// loads their topics' metadata in the background: the first records then
/// find it connected. A failure is only logged; delivery reports its own.
fn warm_up_target_producer(dispatch: &Arc<Dispatcher>, config: &Config) {
    let topics: Vec<String> = config
        .targets
        .iter()
        .filter_map(|t| crate::config::target_topic(&t.url))
        .map(String::from)
        .collect();
    if topics.is_empty() {
        return;
    }
    let dispatch = dispatch.clone();
    tokio::task::spawn_blocking(move || {
        let warm = dispatch
            .target_producer()
            .map_err(|e| e.to_string())
            .and_then(|p| {
                p.warm_up(&topics, Duration::from_secs(10))
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = warm {
            tracing::warn!(topics = ?topics, error = %e, "target producer warm-up failed");
        }
    });
}
