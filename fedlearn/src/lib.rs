//! fedlearn: filled by a later issue.
