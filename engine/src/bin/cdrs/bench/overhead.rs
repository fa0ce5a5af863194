//! Plugin overhead (Wasm against the same policy in native Rust) and
//! plugin load times.

use super::*;

/// The demo filter's policy natively, with the same JSON code the plugin
/// runs (`cdrs_plugin_sdk::json::{lookup_span, equals}`): keep unless
/// `type` is "heartbeat"; not JSON → dead-letter.
pub(super) fn native_filter(records: &[&Record]) -> Vec<bool> {
    use cdrs_plugin_sdk::json::{equals, lookup_span};
    let heartbeat = serde_json::Value::String("heartbeat".into());
    records
        .iter()
        .map(|r| {
            let Some(doc) = r.value.as_deref() else {
                return false;
            };
            match lookup_span(doc, &["type"]) {
                Ok(Some(span)) => !equals(&doc[span], &heartbeat),
                Ok(None) => true,
                Err(_) => false,
            }
        })
        .collect()
}

/// The P2C router's policy natively: two targets drawn in proportion to
/// capacity × weight, the lower assigned / (capacity × weight) wins. Same
/// sampler and generator as the plugin: `alias` is built once per target
/// table (as the plugin does in `update-targets`), draws use Xoshiro256++.
pub(super) fn native_route(
    snapshot: &Snapshot,
    alias: &WeightedAliasIndex<f64>,
    rng: &mut Xoshiro256PlusPlus,
    assigned: &mut [u32],
    records: &[&Record],
) -> Vec<usize> {
    let weight = |i: usize| {
        let t = &snapshot.targets[i];
        (f64::from(t.capacity) * f64::from(t.weight)).max(1.0)
    };
    let mut draw = || alias.sample(rng);
    records
        .iter()
        .map(|_| {
            let a = draw();
            let mut b = draw();
            for _ in 0..16 {
                if b != a {
                    break;
                }
                b = draw();
            }
            let load = |i: usize| f64::from(assigned[i]) / weight(i);
            let pick = if load(a) <= load(b) { a } else { b };
            assigned[pick] += 1;
            pick
        })
        .collect()
}

/// Rounds per overhead row; the row reports the median round.
pub(super) const OVERHEAD_ROUNDS: usize = 5;

pub(super) fn overhead(dir: &Path, quick: bool) -> anyhow::Result<Vec<OverheadRow>> {
    let cache = cache_dir("overhead");
    let rt = runtime(&cache, 1)?;
    let metrics = Arc::new(Metrics::new());
    let json_filter = FilterPlugin::load(&rt, &demo_filter(dir), metrics.clone())?;
    let trivial_filter = FilterPlugin::load(
        &rt,
        &PluginConfig {
            name: "keep-all".into(),
            config: toml::Table::new(),
            ..demo_filter(dir)
        },
        metrics.clone(),
    )?;
    let router = RouterPlugin::load(&rt, &demo_router(dir, false), metrics.clone())?;
    // The same plugins compiled without epoch checks (no call deadline):
    // one row, to show what the deadline costs.
    let cache_nd = cache_dir("overhead-no-deadline");
    let rt_nd = Runtime::without_deadlines(&PluginRuntimeConfig {
        cache_dir: Some(cache_nd.clone()),
        instances: 1,
        ..PluginRuntimeConfig::default()
    })?;
    let json_filter_nd = FilterPlugin::load(&rt_nd, &demo_filter(dir), metrics.clone())?;
    let router_nd = RouterPlugin::load(&rt_nd, &demo_router(dir, false), metrics.clone())?;
    let records: Vec<Record> = (0..8192u64)
        .map(|i| {
            let (key, value, _) = record(i);
            Record {
                topic: "bench".into(),
                partition: 0,
                offset: i as i64,
                timestamp_ms: Some(1_764_000_000_000 + i as i64),
                key: Some(key.into_bytes()),
                value: Some(value.into_bytes()),
                headers: Vec::new(),
            }
        })
        .collect();
    let mut rows = Vec::new();
    for (policy, filter, router) in [
        ("json", &json_filter, &router),
        ("trivial", &trivial_filter, &router),
        (JSON_NO_DEADLINE, &json_filter_nd, &router_nd),
    ] {
        for n_targets in [16, 128] {
            if policy == JSON_NO_DEADLINE && n_targets != 16 {
                continue;
            }
            let registry = Registry::new(
                CapacityConfig::default(),
                &targets(n_targets),
                metrics.clone(),
            );
            let snapshot = registry.snapshot();
            for batch in [1usize, 16, 256, 1024] {
                if policy == JSON_NO_DEADLINE && batch != 256 {
                    continue;
                }
                let total = match (quick, batch) {
                    (true, _) => 2048,
                    (false, 1) => 4096,
                    (false, _) => 65_536,
                };
                // Warm-up: targets pushed, caches hot.
                let warm: Vec<&Record> = records.iter().take(batch).collect();
                let _ = router.route(&snapshot, "bench", 0, &warm);
                let alias = WeightedAliasIndex::new(
                    snapshot
                        .targets
                        .iter()
                        .map(|t| (f64::from(t.capacity) * f64::from(t.weight)).max(1.0))
                        .collect(),
                )?;
                let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
                let mut assigned = vec![0u32; n_targets];
                // Rounds alternate Wasm and native; each figure is the
                // median round, so a noisy neighbour's burst moves one
                // round, not the row.
                let mut wasm_rounds = Vec::with_capacity(OVERHEAD_ROUNDS);
                let mut native_rounds = Vec::with_capacity(OVERHEAD_ROUNDS);
                for _ in 0..if quick { 1 } else { OVERHEAD_ROUNDS } {
                    let (mut f_ns, mut r_ns) = (0u128, 0u128);
                    let mut kept_total = 0usize;
                    let mut done = 0;
                    while done < total {
                        let start = done % (records.len() - batch + 1);
                        let chunk: Vec<&Record> = records[start..start + batch].iter().collect();
                        let t0 = Instant::now();
                        let verdicts = filter.filter("bench", 0, &chunk);
                        let t1 = Instant::now();
                        let kept: Vec<&Record> = chunk
                            .iter()
                            .zip(&verdicts)
                            .filter(|(_, v)| matches!(v, Verdict::Keep))
                            .map(|(r, _)| *r)
                            .collect();
                        let routes = router.route(&snapshot, "bench", 0, &kept);
                        let t2 = Instant::now();
                        assert!(routes
                            .iter()
                            .all(|r| matches!(r, Route::Targets(_) | Route::Default)));
                        f_ns += (t1 - t0).as_nanos();
                        r_ns += (t2 - t1).as_nanos();
                        kept_total += kept.len();
                        done += batch;
                    }
                    // Native, same records, same batches.
                    let mut native_ns = 0u128;
                    let mut native_kept = 0usize;
                    let mut done = 0;
                    while done < total {
                        let start = done % (records.len() - batch + 1);
                        let chunk: Vec<&Record> = records[start..start + batch].iter().collect();
                        let t0 = Instant::now();
                        let keep = match policy {
                            "trivial" => vec![true; chunk.len()],
                            _ => native_filter(&chunk),
                        };
                        let kept: Vec<&Record> = chunk
                            .iter()
                            .zip(&keep)
                            .filter(|(_, k)| **k)
                            .map(|(r, _)| *r)
                            .collect();
                        let picks = native_route(&snapshot, &alias, &mut rng, &mut assigned, &kept);
                        native_ns += t0.elapsed().as_nanos();
                        native_kept += picks.len();
                        done += batch;
                    }
                    anyhow::ensure!(
                        native_kept == kept_total,
                        "native and Wasm policies disagree: {native_kept} vs {kept_total} kept"
                    );
                    let per = |ns: u128| ns as f64 / total as f64;
                    wasm_rounds.push((per(f_ns + r_ns), per(f_ns), per(r_ns)));
                    native_rounds.push(per(native_ns));
                }
                wasm_rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
                native_rounds.sort_by(f64::total_cmp);
                let (wasm_ns, filter_ns, router_ns) = wasm_rounds[wasm_rounds.len() / 2];
                rows.push(OverheadRow {
                    policy,
                    batch,
                    targets: n_targets,
                    wasm_ns,
                    filter_ns,
                    router_ns,
                    native_ns: native_rounds[native_rounds.len() / 2],
                });
            }
        }
    }
    let _ = std::fs::remove_dir_all(&cache);
    let _ = std::fs::remove_dir_all(&cache_nd);
    Ok(rows)
}

/// The overhead row of the JSON policy on plugins compiled without epoch
/// checks (batch 256, 16 targets only).
pub(super) const JSON_NO_DEADLINE: &str = "json-no-deadline";

/// Cold and cached load per plugin; instantiation; RSS per instance.
pub(super) fn loading(dir: &Path) -> anyhow::Result<(Vec<LoadRow>, f64, f64)> {
    let cache = cache_dir("load");
    let mut loads = Vec::new();
    for name in ["field_filter", "p2c_router"] {
        let path = dir.join(format!("{name}.wasm"));
        let rt = runtime(&cache, 1)?;
        let t = Instant::now();
        let compiled = rt.compile(name, &path, None, None)?;
        let cold = t.elapsed().as_secs_f64() * 1e3;
        // The repo's own plugins: cached without loading them first (the
        // daemon caches only after `init` accepted a plugin).
        compiled.persist(&rt);
        let rt = runtime(&cache, 1)?;
        let t = Instant::now();
        rt.compile(name, &path, None, None)?;
        let cached = t.elapsed().as_secs_f64() * 1e3;
        loads.push(LoadRow {
            plugin: name.to_string(),
            cold_ms: cold,
            cached_ms: cached,
        });
    }
    let metrics = Arc::new(Metrics::new());
    let n = 64;
    let rt = runtime(&cache, n)?;
    let cfg: PluginConfig = demo_router(dir, false);
    let compiled = rt.compile(&cfg.name, &cfg.path, None, None)?;
    let t = Instant::now();
    let router =
        RouterPlugin::from_compiled(&rt, &cfg.name, compiled, cfg.config_json(), metrics.clone())?;
    let instantiate_ms = t.elapsed().as_secs_f64() * 1e3 / n as f64;
    drop(router);
    let cfg = demo_filter(dir);
    let compiled = rt.compile(&cfg.name, &cfg.path, None, None)?;
    let before = rss_bytes("VmRSS");
    let filter = FilterPlugin::from_compiled(&rt, &cfg.name, compiled, cfg.config_json(), metrics)?;
    let per_instance = rss_bytes("VmRSS").saturating_sub(before) as f64 / n as f64;
    drop(filter);
    let _ = std::fs::remove_dir_all(&cache);
    Ok((loads, instantiate_ms, per_instance))
}
