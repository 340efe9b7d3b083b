//! The `weir` binary: see `weir::cli`.

use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often freed memory is handed back to the system.
const COLLECT_EVERY: Duration = Duration::from_secs(2);

fn main() {
    // mimalloc returns freed pages to the system only when the thread that freed them
    // allocates again; after a burst of connections closes, worker threads may stay
    // quiet for long. A collection now and then returns that memory.
    std::thread::Builder::new()
        .name("weir-mem".to_string())
        .spawn(|| loop {
            std::thread::sleep(COLLECT_EVERY);
            // SAFETY: mi_collect takes no pointers and may be called from any thread.
            unsafe { libmimalloc_sys::mi_collect(false) };
        })
        .ok();
    std::process::exit(weir::cli::main());
}
