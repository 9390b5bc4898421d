//! `waagent`: the Azure guest agent. See `waagent -help`.

/// Keeps the HTTP(S) client linked into the binary before the WireServer
/// client calls it, so `make size` reports the size the agent will really
/// have, TLS included.
#[used]
static LINK_HTTP: for<'a, 'b> fn(
    &'a waagent::http::Request<'b>,
) -> Result<waagent::http::Response, waagent::http::HttpError> = waagent::http::send;

fn main() {
    // args_os: a non-UTF-8 argument is reported as unknown, not a panic.
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    std::process::exit(waagent::commands::main(&args));
}
