//! Pod network namespaces: the one implementation lives in `ambit_shared::netns` (the sandbox
//! enters pods the same way).

pub use ambit_shared::netns::*;
