//! Simulator side of the Certificates document (being written).
