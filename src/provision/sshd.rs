//! sshd_config editing (being written).
