//! SIGTERM and SIGINT ask the daemon to stop between steps. The handler only
//! sets the flag every wait of a [`crate::clock::Clock`] checks, so a stop
//! takes effect within a tenth of a second of any wait.

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

pub use crate::clock::stop_requested;

extern "C" fn on_signal(_: libc::c_int) {
    crate::clock::request_stop();
}

/// Installs the SIGTERM/SIGINT handlers.
pub fn install_handlers() -> Result<(), String> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }.map_err(|e| format!("cannot handle {sig}: {e}"))?;
    }
    Ok(())
}
