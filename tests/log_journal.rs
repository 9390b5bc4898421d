//! Under systemd the agent's log reaches the journal: when `JOURNAL_STREAM`
//! names standard error, every record is written there too, with journald's
//! `<N>` priority prefix, no time stamp, and the file log's redaction. Here
//! standard error is a plain file whose device and inode `JOURNAL_STREAM`
//! names, as systemd would name its socket. (Its own test binary: the logger
//! is set once per process, and descriptor 2 is swapped for the test.)

use std::os::unix::io::AsRawFd;

use waagent::log::{init, LogOptions};

const PASSWORD: &str = "S3cret-Passw0rd!";
const HASH: &str = "$6$saltsalt$0123456789abcdefghijKLMNOPqrstuvwxyzABCDEFGH";

#[test]
fn records_reach_the_journal_stream_with_their_priority_and_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let journal_path = dir.path().join("journal");
    let journal = std::fs::File::create(&journal_path).unwrap();
    let st = nix::sys::stat::fstat(journal.as_raw_fd()).unwrap();
    std::env::set_var("JOURNAL_STREAM", format!("{}:{}", st.st_dev, st.st_ino));
    // Descriptor 2 becomes the "journal" while the records are logged.
    let saved = nix::unistd::dup(2).unwrap();
    nix::unistd::dup2(journal.as_raw_fd(), 2).unwrap();

    let file = dir.path().join("waagent.log");
    let problems = init(&LogOptions {
        file: file.clone(),
        verbose: true,
        stdout: false,
        console: None,
    });
    log::info!("provisioning agent: Waagent");
    log::warn!("sudoers: <UserPassword>{PASSWORD}</UserPassword>");
    log::error!("set password failed:\nshadow line root:{HASH}:19000:0:99999:7:::");
    log::debug!("state Steady");
    log::logger().flush();

    nix::unistd::dup2(saved, 2).unwrap();
    nix::unistd::close(saved).unwrap();
    assert!(problems.is_empty(), "{problems:?}");

    let text = std::fs::read_to_string(&journal_path).unwrap();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            "<6>provisioning agent: Waagent",
            "<4>sudoers: <UserPassword>[REDACTED]</UserPassword>",
            "<3>set password failed:",
            "<3>shadow line root:[REDACTED]:19000:0:99999:7:::",
            "<7>state Steady",
        ],
        "{text}"
    );
    // The file log is unchanged: the same records, with their time stamps.
    let log = std::fs::read_to_string(&file).unwrap();
    assert!(log.contains("provisioning agent: Waagent"), "{log}");
    assert!(!log.contains("<6>"), "{log}");
    assert!(!log.contains(PASSWORD) && !log.contains(HASH), "{log}");
}
