//! he: filled by a later issue.
