//! `waagent`: the Azure guest agent. See `waagent -help`.

fn main() {
    // args_os: a non-UTF-8 argument is reported as unknown, not a panic.
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    std::process::exit(waagent::commands::main(&args));
}
