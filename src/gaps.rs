//! Gap detection (issue 6): pure functions, being written.
