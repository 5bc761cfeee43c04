//! node: filled by a later issue.
