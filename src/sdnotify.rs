//! What weir tells its supervisor (systemd with `Type=notify`, or weir's master):
//! `READY=1`, `RELOADING=1`, `STOPPING=1`, through `NOTIFY_SOCKET`.

/// Set in a worker's environment (to the master's PID).
pub const WORKER_ENV: &str = "WEIR_MASTER";

/// `sd_notify(state)`: to systemd when started with `Type=notify`, or to weir's master.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let socket = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => return log::warn!("sd_notify: {e}"),
    };
    // Under weir's master, a line says which worker speaks.
    let message = match std::env::var_os(WORKER_ENV) {
        Some(_) => format!("{state}\nWEIR_WORKER={}", std::process::id()),
        None => state.to_string(),
    };
    // Abstract sockets are written with a leading '@'.
    let sent = if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|addr| socket.send_to_addr(message.as_bytes(), &addr))
    } else {
        socket.send_to(message.as_bytes(), &path)
    };
    if let Err(e) = sent {
        log::warn!("sd_notify {state} to {path}: {e}");
    }
}
