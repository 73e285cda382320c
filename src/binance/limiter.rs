//! REST weight pacing (issue 6): pure, being written.
