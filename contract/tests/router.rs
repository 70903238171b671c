//! The assignment functions of the experiment router: the hash must never change (it would
//! reassign every user of a running experiment), spread keys evenly, and weight changes must move
//! as few buckets as possible.

use lexserve_contract::router::{
    BUCKETS, BucketError, BucketTable, MAX_VARIANTS, bucket_counts, bucket_of,
};

/// splitmix64: a seeded, dependency-free generator for the property loops below.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn weights(pairs: &[(&str, u32)]) -> Vec<(String, u32)> {
    pairs.iter().map(|(n, w)| (n.to_string(), *w)).collect()
}

#[test]
fn golden_assignments_never_change() {
    // Written down once, and checked against an independent Python transcription of the hash
    // (FNV-1a 64 over the seed's LE bytes and the key, MurmurHash3 fmix64, (h * 10000) >> 64).
    // If this fails, the hash changed: every user of every running experiment would switch
    // variants. Do not update these values; fix the hash.
    let golden: [(u64, &[u8], u16); 8] = [
        (0, b"", 4836),
        (0, b"user-1", 8461),
        (0, b"user-2", 9794),
        (42, b"user-1", 7728),
        (42, b"alice@example.com", 141),
        (u64::MAX, b"user-1", 6367),
        (7, "ключ-юникод".as_bytes(), 7539),
        (
            1_234_567_890,
            b"a-much-longer-session-identifier-0123456789abcdef",
            9203,
        ),
    ];
    let actual: Vec<u16> = golden
        .iter()
        .map(|(seed, key, _)| bucket_of(*seed, key))
        .collect();
    let expected: Vec<u16> = golden.iter().map(|(_, _, bucket)| *bucket).collect();
    assert_eq!(actual, expected);
}

#[test]
fn seed_changes_the_split() {
    let same = (0..1000)
        .filter(|i| {
            let key = format!("user-{i}");
            bucket_of(1, key.as_bytes()) == bucket_of(2, key.as_bytes())
        })
        .count();
    assert!(
        same < 10,
        "{same} of 1000 keys share a bucket under two seeds"
    );
}

/// The upper-tail probability of chi-square with `df` degrees of freedom, by Wilson–Hilferty's
/// normal approximation (accurate for large df), as a z-score.
fn wilson_hilferty_z(chi2: f64, df: f64) -> f64 {
    let v = 2.0 / (9.0 * df);
    ((chi2 / df).cbrt() - (1.0 - v)) / v.sqrt()
}

#[test]
fn keys_spread_uniformly_over_the_buckets() {
    const KEYS: usize = 200_000;
    let mut counts = vec![0u32; usize::from(BUCKETS)];
    for i in 0..KEYS {
        counts[usize::from(bucket_of(42, format!("user-{i}").as_bytes()))] += 1;
    }
    let expected = KEYS as f64 / f64::from(BUCKETS);
    let chi2: f64 = counts
        .iter()
        .map(|&c| (f64::from(c) - expected).powi(2) / expected)
        .sum();
    let z = wilson_hilferty_z(chi2, f64::from(BUCKETS) - 1.0);
    // |z| < 4.5: a two-sided p-value above ~7e-6, i.e. neither lumpy nor suspiciously even.
    assert!(
        z.abs() < 4.5,
        "chi-square {chi2:.1} over {BUCKETS} buckets, z = {z:.2}"
    );

    // A 50/50 split: chi-square with one degree of freedom is z squared.
    let table = BucketTable::initial(&weights(&[("a", 50), ("b", 50)])).unwrap();
    let to_a = (0..KEYS)
        .filter(|i| table.owner(bucket_of(42, format!("user-{i}").as_bytes())) == Some("a"))
        .count();
    let z = (to_a as f64 - KEYS as f64 / 2.0) / (KEYS as f64 / 4.0).sqrt();
    assert!(z.abs() < 4.5, "{to_a} of {KEYS} keys to a, z = {z:.2}");
}

#[test]
fn initial_tables_are_contiguous_and_exact() {
    let table = BucketTable::initial(&weights(&[("control", 1), ("b", 1), ("c", 1)])).unwrap();
    // 3333.33 each: the one remaining bucket goes to the first of the equal remainders.
    assert_eq!(table.owners[0].ranges, vec![[0, 3334]]);
    assert_eq!(table.owners[1].ranges, vec![[3334, 6667]]);
    assert_eq!(table.owners[2].ranges, vec![[6667, 10_000]]);
    assert_eq!(table.owner(0), Some("control"));
    assert_eq!(table.owner(3334), Some("b"));
    assert_eq!(table.owner(9999), Some("c"));
    assert_eq!(table.owner(10_000), None);

    let table = BucketTable::initial(&weights(&[("control", 0), ("b", 7)])).unwrap();
    assert!(
        table.owners[0].ranges.is_empty(),
        "zero weight owns no bucket"
    );
    assert_eq!(table.owners[1].ranges, vec![[0, 10_000]]);

    assert_eq!(
        bucket_counts(&weights(&[("a", 1), ("b", 2), ("c", 3)])).unwrap(),
        vec![1667, 3333, 5000]
    );
}

#[test]
fn rebalance_moves_only_what_shrinking_variants_give_up() {
    let mut rng = SplitMix(7);
    for round in 0..300 {
        let n = 2 + rng.below(MAX_VARIANTS as u64 - 1) as usize;
        let names: Vec<String> = (0..n).map(|i| format!("v{i}")).collect();
        let random_weights = |rng: &mut SplitMix| -> Vec<(String, u32)> {
            let mut w: Vec<(String, u32)> = names
                .iter()
                .map(|name| {
                    (
                        name.clone(),
                        if rng.below(4) == 0 {
                            0
                        } else {
                            rng.below(1000) as u32
                        },
                    )
                })
                .collect();
            if w.iter().all(|(_, w)| *w == 0) {
                w[0].1 = 1;
            }
            w
        };
        let old_weights = random_weights(&mut rng);
        let mut table = BucketTable::initial(&old_weights).unwrap();
        // Several changes in a row: fragmented tables must rebalance as well as fresh ones.
        for _ in 0..4 {
            let new_weights = random_weights(&mut rng);
            let next = table.rebalance(&new_weights).unwrap();
            let old_counts: Vec<u32> = names.iter().map(|n| table.count(n)).collect();
            let new_counts: Vec<u32> = names.iter().map(|n| next.count(n)).collect();
            let expected: Vec<u32> = bucket_counts(&new_weights)
                .unwrap()
                .into_iter()
                .map(u32::from)
                .collect();
            assert_eq!(
                new_counts, expected,
                "round {round}: counts follow the weights exactly"
            );
            assert_eq!(new_counts.iter().sum::<u32>(), u32::from(BUCKETS));
            assert!(
                next.lookup().is_some(),
                "round {round}: every bucket owned exactly once"
            );

            let mut moved = 0u32;
            for bucket in 0..BUCKETS {
                let (before, after) = (table.owner(bucket).unwrap(), next.owner(bucket).unwrap());
                if before != after {
                    moved += 1;
                    let i = names.iter().position(|n| n == before).unwrap();
                    assert!(
                        new_counts[i] < old_counts[i],
                        "round {round}: {before} lost a bucket but did not shrink"
                    );
                    let j = names.iter().position(|n| n == after).unwrap();
                    assert!(
                        new_counts[j] > old_counts[j],
                        "round {round}: {after} gained a bucket but did not grow"
                    );
                }
            }
            let shrinkage: u32 = old_counts
                .iter()
                .zip(&new_counts)
                .map(|(o, n)| o.saturating_sub(*n))
                .sum();
            assert_eq!(moved, shrinkage, "round {round}: moved buckets");
            table = next;
        }
    }
}

#[test]
fn rebalance_with_other_variants_starts_over() {
    let table = BucketTable::initial(&weights(&[("a", 1), ("b", 1)])).unwrap();
    let new = weights(&[("a", 1), ("c", 3)]);
    assert_eq!(
        table.rebalance(&new).unwrap(),
        BucketTable::initial(&new).unwrap()
    );
    assert_eq!(
        BucketTable::default().rebalance(&new).unwrap(),
        BucketTable::initial(&new).unwrap()
    );
    // The same weights: nothing moves.
    let same = weights(&[("a", 1), ("b", 1)]);
    assert_eq!(table.rebalance(&same).unwrap(), table);
}

#[test]
fn weights_that_cannot_make_a_table_are_errors() {
    assert_eq!(BucketTable::initial(&[]), Err(BucketError::NoVariants));
    assert_eq!(
        BucketTable::initial(&weights(&[("a", 0), ("b", 0)])),
        Err(BucketError::AllZero)
    );
    let eleven: Vec<(String, u32)> = (0..11).map(|i| (format!("v{i}"), 1)).collect();
    assert_eq!(
        BucketTable::initial(&eleven),
        Err(BucketError::TooManyVariants { count: 11 })
    );
    assert_eq!(
        BucketTable::initial(&weights(&[("a", 1), ("a", 2)])),
        Err(BucketError::DuplicateVariant { name: "a".into() })
    );
    assert_eq!(
        BucketTable::initial(&weights(&[("", 1)])),
        Err(BucketError::EmptyName)
    );
    let table = BucketTable::initial(&weights(&[("a", 1)])).unwrap();
    assert_eq!(
        table.rebalance(&weights(&[("a", 0)])),
        Err(BucketError::AllZero)
    );
    // Large weights do not overflow.
    assert_eq!(
        bucket_counts(&weights(&[("a", u32::MAX), ("b", u32::MAX)])).unwrap(),
        vec![5000, 5000]
    );
    assert!(BucketError::AllZero.to_string().contains("zero"));
}
