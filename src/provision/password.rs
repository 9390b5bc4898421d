//! Password hashing (being written).
