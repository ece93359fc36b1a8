//! In-pod capture: entering a pod's network namespace (to open listeners there) and the
//! redirect rules the node agent installs inside it (Istio's in-pod rule set).

pub mod netns;
pub mod rules;
