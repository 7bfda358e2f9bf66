//! Certificate requests and self-signed certificates signed by a token key (in progress).
