//! Importing an existing PEM private key into the token (in progress).
