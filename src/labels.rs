//! The labels prewarm reads and writes on containerd's image records and
//! content, in one place: the pull writes them, gc reads them.

/// Label CRI puts on images it manages.
pub const MANAGED_LABEL: &str = "io.cri-containerd.image";
/// Label that keeps kubelet's image GC off an image (containerd ≥ 1.7).
pub const PINNED_LABEL: &str = "io.cri-containerd.pinned";
/// Label marking records prewarm wrote.
pub const PREWARM_LABEL: &str = "io.prewarm.preloaded";
/// Label marking records prewarm pinned, so that it only ever unpins its
/// own pins.
pub const PREWARM_PINNED_LABEL: &str = "io.prewarm.pinned";

/// Content label: this blob keeps the manifest's config alive.
pub const GC_REF_CONFIG: &str = "containerd.io/gc.ref.content.config";
/// Content label prefix: this blob keeps layer (`l.<n>`) or manifest
/// (`m.<n>`) number `n` alive.
pub const GC_REF_CONTENT: &str = "containerd.io/gc.ref.content";
/// Content label prefix on the config blob: keeps the top snapshot of the
/// image alive in the named snapshotter.
pub const GC_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.";
/// Content label on a layer blob: its diff ID.
pub const UNCOMPRESSED: &str = "containerd.io/uncompressed";
/// Content label prefix: where the blob came from (host without port).
pub const DISTRIBUTION_SOURCE: &str = "containerd.io/distribution.source.";
