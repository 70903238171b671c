//! The reference sample's centroid, and an embedding's cosine to it (`centroid_cosine`).

/// The normalized mean of the normalized `embeddings` (each input weighs the same whatever its
/// norm); `None` when there are none or they cancel out.
pub fn centroid<'a>(embeddings: impl IntoIterator<Item = &'a [f32]>) -> Option<Vec<f32>> {
    let mut sum: Vec<f64> = Vec::new();
    for embedding in embeddings {
        let norm = norm(embedding);
        if norm == 0.0 {
            continue;
        }
        if sum.is_empty() {
            sum = vec![0.0; embedding.len()];
        }
        if sum.len() != embedding.len() {
            return None;
        }
        sum.iter_mut()
            .zip(embedding)
            .for_each(|(s, v)| *s += f64::from(*v) / norm);
    }
    let total = sum.iter().map(|s| s * s).sum::<f64>().sqrt();
    if total == 0.0 || !total.is_finite() {
        return None;
    }
    Some(sum.iter().map(|s| (s / total) as f32).collect())
}

/// The cosine between `embedding` (any norm) and a unit `centroid`, clamped to [-1, 1] so that
/// rounding never lands it past the last bin; 0 for a zero vector.
pub fn cosine(centroid: &[f32], embedding: &[f32]) -> f64 {
    let norm = norm(embedding);
    if norm == 0.0 {
        return 0.0;
    }
    let dot: f64 = centroid
        .iter()
        .zip(embedding)
        .map(|(c, v)| f64::from(*c) * f64::from(*v))
        .sum();
    (dot / norm).clamp(-1.0, 1.0)
}

fn norm(vector: &[f32]) -> f64 {
    vector
        .iter()
        .map(|v| f64::from(*v) * f64::from(*v))
        .sum::<f64>()
        .sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centroid_weighs_inputs_equally_and_is_unit() {
        let a = [10.0f32, 0.0];
        let b = [0.0f32, 1.0];
        let c = centroid([&a[..], &b[..]]).unwrap();
        let half = std::f32::consts::FRAC_1_SQRT_2;
        assert!(
            (c[0] - half).abs() < 1e-6 && (c[1] - half).abs() < 1e-6,
            "{c:?}"
        );
        assert!((cosine(&c, &a) - f64::from(half)).abs() < 1e-6);
        assert!((cosine(&c, &[3.0, 3.0]) - 1.0).abs() < 1e-6);
        assert!(cosine(&c, &[3.0, 3.0]) <= 1.0);
        assert_eq!(cosine(&c, &[0.0, 0.0]), 0.0);
    }

    #[test]
    fn no_centroid_from_nothing_or_opposites() {
        assert_eq!(centroid(std::iter::empty()), None);
        assert_eq!(centroid([&[1.0f32, 0.0][..], &[-1.0, 0.0][..]]), None);
        assert_eq!(centroid([&[1.0f32, 0.0][..], &[1.0][..]]), None);
    }
}
