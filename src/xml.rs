//! A small XML reader over xmlparser (being written).
