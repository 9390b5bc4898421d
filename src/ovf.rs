//! ovf-env.xml (being written).
