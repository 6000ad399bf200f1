// Fields generated as `Box`es (prost-build paths). Included by build.rs,
// which boxes them, and by src/scan.rs, which counts a boxed field's
// allocation where an inline one costs nothing beyond its parent.
//
// Large, optional parts of an event are boxed so that an event without
// them stays small: the collector decodes batches of a thousand events,
// and each inline byte is moved as the batch's vector grows.
const BOXED: &[&str] = &[
    ".spyglass.v1.Event.container",
    ".spyglass.v1.Event.detail.agent",
    ".spyglass.v1.Event.aggregate",
];
