//! Transport certificate and Certificates decryption (being written).
