//! SIGTERM and SIGINT ask the daemon to stop between steps. The handler only
//! sets the flag every wait of a [`crate::clock::Clock`] checks and wakes
//! the wait through the clock's self-pipe, so a stop ends any wait at once.

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

pub use crate::clock::stop_requested;

extern "C" fn on_signal(_: libc::c_int) {
    crate::clock::request_stop();
}

/// Installs the SIGTERM/SIGINT handlers (and the self-pipe they wake waits
/// through).
pub fn install_handlers() -> Result<(), String> {
    crate::clock::install_wakeup().map_err(|e| format!("cannot make the wake-up pipe: {e}"))?;
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic and write(2)s one
        // byte, both async-signal-safe.
        unsafe { sigaction(sig, &action) }.map_err(|e| format!("cannot handle {sig}: {e}"))?;
    }
    Ok(())
}
