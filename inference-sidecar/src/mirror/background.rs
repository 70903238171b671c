//! Where the mirror does its work: one thread of its own, in Linux's `SCHED_IDLE` class (it runs
//! only when no thread of normal priority wants the CPU), running its own single-threaded async
//! runtime. Sending copies, parsing both answers and comparing them all happen there, so
//! production's threads always come first; the mirror runs in what is left, and when that is not
//! enough its queues fill and drop copies (counted), which is the point: the shadow can never
//! slow production. (A lower `nice` alone was not enough: the kernel still gave the mirror slices
//! of a saturated core, +1 ms at production's p50 in `bench/mirror.sh`.) The thread never delays
//! the process's exit (it is not joined).

use std::io;

/// Where `SCHED_IDLE` is refused, how much lower than production the mirror's thread runs
/// (Linux `nice`; higher is lower).
pub const NICE: i32 = 19;

/// Starts the thread and returns a handle to spawn the mirror's tasks on.
pub fn start() -> io::Result<tokio::runtime::Handle> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("lexserve-mirror".to_string())
        .spawn(move || {
            lower_priority();
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = sender.send(Err(e));
                    return;
                }
            };
            let _ = sender.send(Ok(runtime.handle().clone()));
            // Runs the mirror's tasks until the process exits.
            runtime.block_on(std::future::pending::<()>());
        })?;
    receiver
        .recv()
        .map_err(|_| io::Error::other("the mirror's thread ended before its runtime started"))?
}

/// Puts this thread in `SCHED_IDLE` (with pid 0 the calling thread only), or where that is
/// refused, at the lowest `nice`. A refusal of both is logged and the mirror runs at normal
/// priority: its queues still bound what it can take.
fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0 {
        return;
    }
    let idle_refused = io::Error::last_os_error();
    // SAFETY: setpriority only reads its integer arguments.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) } != 0 {
        tracing::warn!(
            sched_idle = %idle_refused,
            nice = %io::Error::last_os_error(),
            "mirror: could not lower the mirror thread's priority"
        );
    }
}
