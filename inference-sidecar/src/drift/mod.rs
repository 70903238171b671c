//! Drift monitoring on the server's side (see `lexserve_contract::drift`, the contract): the live
//! series are observed where each value arises (tokens and unknown tokens when a request is
//! tokenized, the embedding's norm in the head, the centroid cosine and the predicted class when
//! the answer is back, prompt and output lengths in the generation engine); a reference sample,
//! when `serve` has one, is run through the model at start-up and its counts exported as the
//! baseline.
//!
//! - [`reference`]: reading and bounding the reference sample file.
//! - [`bins`]: which bin a value falls in, as the exposition's histograms decide it.
//! - [`centroid`]: the reference sample's centroid and an embedding's cosine to it.
//! - [`baseline`]: the sample's counts per feature and bin, and their export as gauges.
//! - [`sample_run`]: running the sample through the loaded model, outside the live series.

pub mod baseline;
pub mod bins;
pub mod centroid;
pub mod reference;
pub mod sample_run;
