//! The index against brute force, the HNSW graph's recall, files that round-trip or are refused, and the retrieval
//! metrics on items with a known answer.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use vesalius_retrieval::{Index, Metric, average_precision, evaluate, recall};

/// `n` vectors of length `dim` around `clusters` centres (seeded), with their cluster as label.
fn clustered(n: usize, dim: usize, clusters: usize, spread: f32, seed: u64) -> (Vec<Vec<f32>>, Vec<Option<String>>) {
    let mut state = seed;
    let mut uniform = move || {
        state = vesalius_io::mix(state.wrapping_add(0x9E37_79B9_7F4A_7C15));
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let centres: Vec<Vec<f32>> = (0..clusters).map(|_| (0..dim).map(|_| 4.0 * uniform()).collect()).collect();
    let mut vectors = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let c = i % clusters;
        vectors.push(centres[c].iter().map(|x| x + spread * uniform()).collect());
        labels.push(Some(format!("c{c}")));
    }
    (vectors, labels)
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("item{i}")).collect()
}

#[test]
fn exact_search_ranks_by_the_metric() {
    let v = vec![vec![3.0, 4.0], vec![1.0, 0.0], vec![0.0, 2.0], vec![-1.0, 0.0]];
    let e = Index::new(ids(4), vec![None; 4], vec![None; 4], v.clone(), Metric::Euclidean, "t").unwrap();
    let hits = e.search_exact(&[0.0, 0.0], 4);
    assert_eq!(hits.iter().map(|h| h.item).collect::<Vec<_>>(), vec![1, 3, 2, 0]); // tie 1 / 3 by row
    assert_eq!(hits.iter().map(|h| h.distance).collect::<Vec<_>>(), vec![1.0, 1.0, 2.0, 5.0]);
    let c = Index::new(ids(4), vec![None; 4], vec![None; 4], v, Metric::Cosine, "t").unwrap();
    let hits = c.search_exact(&[1.0, 1.0], 4);
    // cos with (1, 1)/√2: (3,4) 0.990, (0,2) 0.707, (1,0) 0.707, (−1,0) −0.707.
    assert_eq!(hits[0].item, 0);
    assert!((hits[0].distance - (1.0 - 7.0 / (5.0 * 2f32.sqrt()))).abs() < 1e-6);
    assert!((hits[3].distance - (1.0 + 1.0 / 2f32.sqrt())).abs() < 1e-6);
    // Bad vectors are refused, naming the item.
    let e = Index::new(ids(2), vec![None; 2], vec![None; 2], vec![vec![1.0, 2.0], vec![f32::NAN, 0.0]], Metric::Cosine, "t").err().unwrap();
    assert!(e.to_string().contains("item1"), "{e}");
}

#[test]
fn the_hnsw_graph_finds_the_exact_neighbours_and_round_trips() {
    let (vectors, labels) = clustered(3000, 24, 30, 2.0, 5);
    let mut index = Index::new(ids(3000), labels, vec![None; 3000], vectors, Metric::Euclidean, "t").unwrap();
    index.build_approximate(100, 100, 1);
    let (queries, _) = clustered(200, 24, 30, 2.5, 99);
    let r = recall(&index, &queries, 10);
    assert!(r > 0.95, "recall@10 {r}");
    // Saved and read back: the same answers.
    let dir = tempfile::tempdir().unwrap();
    index.save(dir.path()).unwrap();
    let back = Index::load(dir.path()).unwrap();
    assert!(back.is_approximate());
    for q in queries.iter().take(20) {
        assert_eq!(back.search_approximate(q, 10), index.search_approximate(q, 10));
        assert_eq!(back.search_exact(q, 10), index.search_exact(q, 10));
    }
    // Files that disagree are refused before the vectors are read.
    std::fs::write(dir.path().join("vectors.f32"), vec![0u8; 12]).unwrap();
    let e = Index::load(dir.path()).err().unwrap().to_string();
    assert!(e.contains("vectors.f32") && e.contains("need"), "{e}");
    std::fs::remove_file(dir.path().join("hnsw.mpk")).unwrap();
    let e = Index::load(dir.path()).err().unwrap().to_string();
    assert!(e.contains("vectors.f32") || e.contains("hnsw.mpk"), "{e}");
    let e = Index::load(&dir.path().join("none")).err().unwrap().to_string();
    assert!(e.contains("meta.json"), "{e}");
}

#[test]
fn metrics_on_a_known_answer() {
    // Average precision: relevant at ranks 1 and 3 of 4, two relevant in all → (1 + 2/3) / 2.
    assert!((average_precision(&[true, false, true, false], 2, 4) - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
    assert_eq!(average_precision(&[false, false], 3, 2), 0.0);
    // Well separated clusters: every neighbour shares the label.
    let (vectors, labels) = clustered(120, 8, 4, 0.1, 3);
    let index = Index::new(ids(120), labels.clone(), vec![None; 120], vectors.clone(), Metric::Cosine, "t").unwrap();
    let m = evaluate(&index, 10, false, 200, 0).unwrap();
    assert_eq!((m.queries, m.k), (120, 10));
    assert!((m.precision_at_k.value - 1.0).abs() < 1e-12 && (m.map_at_k.value - 1.0).abs() < 1e-12);
    assert!((m.chance_precision - 29.0 / 119.0).abs() < 1e-12);
    // Labels that carry no information: precision near chance.
    let shuffled: Vec<Option<String>> = (0..120).map(|i| Some(format!("c{}", (i * 7 / 3) % 4))).collect();
    let noise = Index::new(ids(120), shuffled, vec![None; 120], vectors.clone(), Metric::Cosine, "t").unwrap();
    let m = evaluate(&noise, 10, false, 200, 0).unwrap();
    assert!(m.precision_at_k.value < 0.5, "{:?}", m.precision_at_k);
    // Groups: an item's own group is not counted. Each group holds one item of each cluster, so the query's
    // neighbours of its own cluster all come from other groups and precision stays 1.
    let groups: Vec<Option<String>> = (0..120).map(|i| Some(format!("g{}", i / 4))).collect();
    let grouped = Index::new(ids(120), labels, groups, vectors, Metric::Cosine, "t").unwrap();
    let m = evaluate(&grouped, 5, false, 200, 0).unwrap();
    assert!((m.precision_at_k.value - 1.0).abs() < 1e-12 && m.groups_left_out);
    // One group for every item (patches of one subject): groups cannot be left out, and are not.
    let one: Vec<Option<String>> = vec![Some("subject".into()); 120];
    let (vectors, labels) = clustered(120, 8, 4, 0.1, 3);
    let single = Index::new(ids(120), labels, one, vectors, Metric::Cosine, "t").unwrap();
    let m = evaluate(&single, 5, false, 200, 0).unwrap();
    assert!(!m.groups_left_out && m.queries == 120);
}
