//! Deterministic cluster simulator (work in progress: see issue 3).
