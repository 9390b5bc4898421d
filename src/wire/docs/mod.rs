//! Typed models of the fabric's documents (being written).
