//! `gateway run`: install (or adopt) the kernel path and serve until
//! SIGTERM or SIGINT. SIGHUP (`systemctl reload`) and `gateway reload`
//! re-read the config and apply it live (see `reload`); SIGHUP and
//! SIGUSR1 also reopen the audit log.
//!
//! Stopping never opens the site: SIGTERM (every `systemctl restart` and
//! upgrade), SIGKILL and a crash all leave the pinned program guarding the
//! interfaces. While no daemon listens, whatever the program would hand it
//! finds no socket and is dropped, and everything else is dropped as
//! always; the next daemon adopts the pins without a gap. Only
//! `gateway uninstall` removes the kernel path.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};

use std::os::fd::{AsFd as _, BorrowedFd};

use gateway_common::{LISTENER_V4, LISTENER_V6, UDP_V4, UDP_V6};
use tokio::net::{TcpListener, UdpSocket};

use crate::{
    audit::{Audit, Event, Record},
    config::Config,
    dns::Responder,
    ebpf::{KernelPath, events, routing::Routing},
    pidfile, proxy,
    reload::{
        Shared,
        apply::{Live, Trigger, build_proxy},
    },
    time::TimeServer,
    udp,
};

/// The configuration generation at start; each applied reload adds one.
const CONFIG_GENERATION: u64 = 1;
/// `gateway reload` requests waiting for the main loop.
const RELOAD_QUEUE: usize = 4;

/// How often the gateway's own addresses are re-read into the kernel.
const LOCAL_REFRESH: Duration = Duration::from_secs(10);

/// `path` is the file `config` was read from: SIGHUP and `gateway reload`
/// read it again.
pub async fn run(config: Config, path: PathBuf) -> anyhow::Result<()> {
    raise_nofile(&config);
    let (audit, audit_writer) = Audit::open(&config.audit.path).await?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // Before anything else: SIGUSR1's default action would end the daemon.
    let mut sigusr1 =
        signal(SignalKind::user_defined1()).context("installing the SIGUSR1 handler")?;
    // SIGHUP's default action would end the daemon too.
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;

    // Everything that can fail on the config's content before the kernel
    // is touched: the CA, the cache, the upstream clients.
    let serving = crate::sites::build(&config).await?;
    let metrics = crate::metrics::global();
    let passthrough = config.passthrough_services();
    let site_hosts: Vec<String> = config.sites.iter().map(|s| s.host.clone()).collect();
    metrics.set_names(
        &site_hosts,
        &passthrough
            .iter()
            .map(|s| s.name.clone())
            .collect::<Vec<_>>(),
    );
    // Bound before the kernel is touched: a taken port fails the start
    // with nothing changed.
    let admin_listener = match config.admin.address() {
        Some(addr) => Some(crate::metrics::admin::bind(addr).await?),
        None => None,
    };

    // The children listener (a parent gateway's): bound and its TLS set
    // up before the kernel is touched, like the admin listener.
    let children_acceptor = crate::children::acceptor(&config)?;
    let children_listeners = crate::children::bind(&config).await?;

    // Listeners first: the moment the program is attached, redirected
    // SYNs find a socket.
    let listeners = proxy::bind(config.proxy.port).with_context(|| {
        format!(
            "binding the transparent listener on port {}",
            config.proxy.port
        )
    })?;
    // The DNS and NTP socket shares the proxy's port number (UDP's ports
    // are another space), so there is no second port to configure.
    let udp_sockets = if config.dns.enabled || config.time.serve {
        udp::bind(config.proxy.port).with_context(|| {
            format!(
                "binding the transparent UDP socket for DNS and time on port {}",
                config.proxy.port
            )
        })?
    } else {
        Vec::new()
    };
    let slots = socket_slots(&listeners, &udp_sockets)?;
    let _pid = pidfile::PidFile::create(&config.state_dir)?;
    let routing = routing(&config);
    routing.install().await?;
    let mut kernel = match KernelPath::install(&config, &slots) {
        Ok(k) => k,
        Err(e) => {
            // Nothing of ours guards the interfaces; don't leave rules.
            if let Err(re) = routing.remove().await {
                tracing::warn!(error = %re, "could not remove routing rules after a failed start");
            }
            return Err(e.into());
        }
    };
    let adopted = kernel.adopted;
    let interfaces: Vec<String> = kernel
        .attachments()
        .iter()
        .map(|a| format!("{}({:?})", a.interface, a.mode).to_lowercase())
        .collect();
    let ring = kernel.maps.events.take();
    sync_local(&config, &mut kernel.maps)?;
    let maps = Arc::new(Mutex::new(kernel.maps));

    let (stop_tx, stop_rx) = watch::channel(false);
    let events_task = ring.map(|ring| {
        tokio::spawn(events::run(
            ring,
            maps.clone(),
            audit.clone(),
            Duration::from_secs(config.kernel.drop_flush_secs),
            stop_rx.clone(),
        ))
    });
    let dns = config
        .dns
        .enabled
        .then(|| Arc::new(Responder::new(&config, audit.clone())));
    let time = config
        .time
        .serve
        .then(|| TimeServer::new(&config, audit.clone()));
    let services = Arc::new(udp::Services::new(dns.clone(), time));
    let udp_tasks: Vec<_> = udp_sockets
        .into_iter()
        .map(|s| tokio::spawn(udp::serve(services.clone(), s, stop_rx.clone())))
        .collect();
    // Addresses change (DHCP on the gateway host, an admin's `ip addr`):
    // the program's view of the gateway's own follows within seconds.
    // The config a reload replaces: the refresh reads the current one.
    let current = Arc::new(Shared::new(config.clone()));
    let local_task = {
        let (maps, current, mut stop) = (maps.clone(), current.clone(), stop_rx.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(LOCAL_REFRESH) => {}
                    _ = stop.changed() => return,
                }
                let config = current.load();
                let mut m = maps.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = sync_local(&config, &mut m) {
                    tracing::warn!(error = %e, "refreshing the gateway's own addresses in the kernel");
                }
            }
        })
    };
    let limits = proxy::limits::Limits::new(
        config.proxy.max_connections,
        config.proxy.max_connections_per_device,
    );
    let (cache, oci) = match serving.content {
        Some(content) => (Some(content.cache), content.handlers),
        None => (None, Default::default()),
    };
    let generation = Arc::new(AtomicU64::new(CONFIG_GENERATION));
    let admin = admin_listener.map(|listener| {
        let registry = metrics.registry(crate::metrics::collector::Sources {
            limits: Some(limits.clone()),
            cache: cache.clone(),
            kernel: Some(maps.clone()),
            audit: Some(audit.counter()),
            generation: generation.clone(),
        });
        let admin = Arc::new(crate::metrics::admin::Admin::new(registry));
        let task = tokio::spawn(crate::metrics::admin::serve(
            admin.clone(),
            listener,
            stop_rx.clone(),
        ));
        (admin, task)
    });
    let proxy = Arc::new(Shared::new(build_proxy(
        &config,
        crate::sites::Serving {
            content: None,
            ..serving
        },
        limits.clone(),
        dns.clone(),
        &audit,
    )));
    let serve_task = tokio::spawn(proxy::serve(proxy.clone(), listeners, stop_rx.clone()));
    let children_task = children_acceptor.map(|acceptor| {
        tokio::spawn(crate::children::serve(
            proxy.clone(),
            acceptor,
            children_listeners,
            stop_rx.clone(),
        ))
    });
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel(RELOAD_QUEUE);
    let mirror = Arc::new(crate::mirror::Runner::new(Some(audit.clone())));
    // The control socket exists whenever the daemon runs: `gateway
    // status` asks it, with or without sites.
    let control = Arc::new(crate::control::server::Control {
        cache: cache.clone(),
        handlers: Shared::new(oci),
        audit: Some(audit.counter()),
        daemon: Some(Shared::new(crate::control::server::DaemonInfo {
            limits: limits.clone(),
            services: passthrough,
            sites: site_hosts,
            generation: CONFIG_GENERATION,
        })),
        reload: Some(reload_tx),
        mirror: Some(mirror.clone()),
    });
    let mirror_task =
        crate::mirror::schedule::spawn(mirror, current.clone(), control.clone(), stop_rx.clone());
    let live = Live {
        path: std::fs::canonicalize(&path).unwrap_or(path),
        config: current,
        proxy,
        dns,
        cache,
        control: control.clone(),
        maps: maps.clone(),
        limits,
        audit: audit.clone(),
        generation,
    };
    let control_task = {
        let state_dir = config.state_dir.clone();
        let task_control = control.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::control::server::serve(task_control, &state_dir, stop_rx).await {
                tracing::error!(error = %e, "control socket failed; `gateway cache` and `gateway status` will not reach this daemon");
            }
        })
    };

    tracing::info!(adopted, interfaces = ?interfaces, "gateway ready");
    if let Some((admin, _)) = &admin {
        admin
            .ready
            .store(true, std::sync::atomic::Ordering::Release);
    }
    // systemd (Type=notify) counts the service started here, where
    // /readyz turns 200, not at exec; the watchdog pings from here on.
    let notifier = crate::notify::Notifier::from_env();
    notifier.ready(&format!("guarding {}", interfaces.join(", ")));
    notifier.spawn_watchdog();
    audit
        .log(
            Record::new(Event::GatewayStart)
                .reason(if adopted { "adopted" } else { "installed" })
                .detail(format!(
                    "version {} on {}",
                    env!("CARGO_PKG_VERSION"),
                    interfaces.join(", ")
                )),
        )
        .await;

    loop {
        tokio::select! {
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: stopping; the kernel path keeps guarding");
                break;
            }
            _ = sigint.recv() => {
                tracing::info!("SIGINT: stopping; the kernel path keeps guarding");
                break;
            }
            // logrotate's postrotate: the log was moved away.
            _ = sigusr1.recv() => audit.reopen(),
            // `systemctl reload`: a rotated log is reopened too, as most
            // daemons do on SIGHUP.
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reopening the audit log and reloading the config");
                audit.reopen();
                // Refused or applied, it is logged and audited there.
                let _ = live.reload(Trigger::Signal, None, sync_local).await;
            }
            // `gateway reload` (the unit's ExecReload): as SIGHUP, with
            // the answer sent back.
            Some(ask) = reload_rx.recv() => {
                audit.reopen();
                let result = live.reload(Trigger::Control, Some(&ask.path), sync_local).await;
                let _ = ask.answer.send(result.map_err(|e| e.to_string()));
            }
        }
    }
    // The live state holds the proxy, the cache, the maps and an audit
    // handle: let them go before the teardown below waits on them.
    drop(live);
    notifier.stopping();
    let _ = stop_tx.send(true);
    let _ = serve_task.await;
    if let Some(t) = children_task {
        let _ = t.await;
    }
    for t in udp_tasks {
        let _ = t.await;
    }
    let _ = local_task.await;
    let _ = control_task.await;
    let _ = mirror_task.await;
    // The admin registry holds a cache handle and the maps: let it go.
    if let Some((admin, task)) = admin {
        let _ = task.await;
        drop(admin);
    }
    if let Some(t) = events_task {
        let _ = t.await;
    }

    // The DNS and time services hold audit handles: the writer closes only
    // once every handle is gone.
    drop(services);
    // The event task held the last other reference. The maps, links and
    // pins stay: dropping the daemon's handles does not unpin anything.
    drop(maps);
    audit
        .log(
            Record::new(Event::GatewayStop)
                .reason("guarding")
                .detail("the kernel path stays installed and drops what it would hand to the daemon; `gateway uninstall` removes it"),
        )
        .await;
    // The mirror runner, which the control state keeps, holds one too.
    if let Some(mirror) = &control.mirror {
        mirror.release_audit();
    }
    drop(audit);
    audit_writer.close().await;
    if let Some(cache) = Arc::try_unwrap(control).ok().and_then(|c| c.cache)
        && let Err(e) = cache.close().await
    {
        tracing::error!(error = %e, "closing the cache");
    }
    Ok(())
}

/// `gateway uninstall`: removes the program, its links and pins, the
/// policy routing and the state record. Refused while a daemon runs.
pub async fn uninstall(config: &Config) -> anyhow::Result<()> {
    if let Some(pid) = pidfile::running(&config.state_dir) {
        anyhow::bail!(
            "a gateway daemon (pid {pid}) is running with this state_dir: stop it first (systemctl stop margo-gateway), then uninstall"
        );
    }
    let removed = KernelPath::uninstall(config)?;
    routing(config).remove().await?;
    if removed {
        println!(
            "removed the kernel path (programs, links, pins, policy routing); the interfaces are no longer guarded"
        );
    } else {
        println!("nothing was installed; policy routing checked and removed if present");
    }
    Ok(())
}

fn routing(config: &Config) -> Routing {
    Routing {
        mark: config.kernel.mark,
        table: config.kernel.route_table,
        priority: config.kernel.rule_priority,
    }
}

/// The daemon's sockets by their slot in the program's socket map.
fn socket_slots<'a>(
    listeners: &'a [TcpListener],
    udp: &'a [UdpSocket],
) -> anyhow::Result<Vec<(u32, BorrowedFd<'a>)>> {
    let mut slots = Vec::new();
    for l in listeners {
        let v4 = l
            .local_addr()
            .context("the transparent listener's address")?
            .is_ipv4();
        slots.push((if v4 { LISTENER_V4 } else { LISTENER_V6 }, l.as_fd()));
    }
    for u in udp {
        let v4 = u
            .local_addr()
            .context("the UDP service socket's address")?
            .is_ipv4();
        slots.push((if v4 { UDP_V4 } else { UDP_V6 }, u.as_fd()));
    }
    Ok(slots)
}

/// Writes the gateway's own device-side addresses and the configured DHCP
/// servers into the program's `LOCAL` table.
/// Also writes the prefixes devices may send from: `devices.prefixes`, or
/// the device interfaces' subnets.
pub(crate) fn sync_local(config: &Config, maps: &mut crate::ebpf::Maps) -> anyhow::Result<()> {
    let own = crate::dns::interface_addresses(&config.devices.interfaces);
    let entries = crate::ebpf::local_entries(&own, &config.devices.dhcp_server_addresses());
    maps.sync_local(&entries)
        .context("writing the gateway's own addresses into the kernel")?;
    let prefixes: Vec<_> = if config.devices.prefixes.is_empty() {
        crate::dns::interface_subnets(&config.devices.interfaces)
    } else {
        config
            .devices
            .prefix_list()
            .into_iter()
            .map(|(ip, len)| (crate::dns::network(ip, len), len))
            .collect()
    };
    maps.sync_sources(&prefixes)
        .context("writing the devices' prefixes into the kernel")
}

/// Raises the open-file limit to its hard maximum: every held connection
/// is a descriptor (two for passthrough), and a limit of 1024 lets one
/// device's idle connections starve fills, cache reads and the manager.
fn raise_nofile(config: &Config) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a valid, initialised struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            tracing::warn!("could not raise the open-file limit");
        }
        let _ = libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    // Two per passthrough connection, plus the cache, fills and sockets.
    let wanted = (config.proxy.max_connections as u64) * 2 + 1024;
    if lim.rlim_cur < wanted {
        tracing::warn!(
            limit = lim.rlim_cur,
            wanted,
            "the open-file limit is below what proxy.max_connections needs; raise LimitNOFILE"
        );
    } else {
        tracing::debug!(limit = lim.rlim_cur, "open-file limit");
    }
}
