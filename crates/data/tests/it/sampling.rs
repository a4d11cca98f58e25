//! Patch sampling, sliding-window inference, dataset layouts, folds, the cache and the loader.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use std::path::Path;
use vesalius_data::cache::{DiskCache, MemoryCache, Volume};
use vesalius_data::folds::{kfold, read_splits, stratified_kfold, write_splits};
use vesalius_data::loader::{Cases, LoaderConfig, PatchLoader, load_case};
use vesalius_data::msd::{self, Case};
use vesalius_data::patch::{PatchSampler, Sampling, grid_starts};
use vesalius_data::transforms::{Pipeline, Subject, Transform, rng};
use vesalius_io::{IDENTITY, Image, nifti};

fn volume(shape: [usize; 3], f: impl Fn(usize, usize, usize) -> f32) -> Image {
    let mut data = Vec::new();
    for z in 0..shape[2] {
        for y in 0..shape[1] {
            for x in 0..shape[0] {
                data.push(f(x, y, z));
            }
        }
    }
    Image::new(data, shape.to_vec(), 1, IDENTITY, "float32").unwrap()
}

#[test]
fn grid_covers_every_voxel_with_the_requested_overlap() {
    for (n, w, o) in [(10usize, 4usize, 0.5), (96, 32, 0.25), (5, 8, 0.5), (33, 33, 0.0), (100, 7, 0.9)] {
        let starts = grid_starts(&[n], &[w], o).unwrap();
        let mut covered = vec![false; n];
        for s in &starts {
            for c in covered.iter_mut().skip(s[0]).take(w) {
                *c = true;
            }
            assert!(s[0] + w <= n.max(w));
        }
        assert!(covered.iter().all(|&c| c), "{n} {w} {o}");
        if n > w {
            let step = ((w as f64 * (1.0 - o)).floor() as usize).max(1);
            assert_eq!(starts[1][0] - starts[0][0], step);
            assert_eq!(starts.last().unwrap()[0], n - w);
        }
    }
    assert_eq!(grid_starts(&[10, 6], &[4, 6], 0.5).unwrap().len(), 4);
    assert!(grid_starts(&[10], &[4], 1.0).is_err());
}

#[test]
fn label_balanced_sampling_keeps_its_share() {
    let label = volume([40, 40, 20], |x, y, z| ((x == 33 && y == 5 && z == 17) as u8 * 2) as f32);
    let s = Subject::with_label(volume([40, 40, 20], |x, _, _| x as f32), label).unwrap();
    let sampler = PatchSampler { patch: vec![8, 8, 8], sampling: Sampling::LabelBalanced { foreground: 1.0 / 3.0 } };
    let batch = 6;
    let forced: Vec<bool> = (0..batch).map(|i| sampler.force_foreground(i, batch)).collect();
    assert_eq!(forced, vec![false, false, false, false, true, true]);
    let mut r = rng(3);
    for _ in 0..20 {
        let p = sampler.sample(&s, true, &mut r).unwrap();
        assert_eq!(p.label.as_ref().unwrap().data().iter().filter(|&&v| v == 2.0).count(), 1);
        assert_eq!(p.image.shape(), &[8, 8, 8]);
    }
    // Uniform patches of a sparse label rarely hold it.
    let uniform = PatchSampler { patch: vec![8, 8, 8], sampling: Sampling::Uniform };
    let hits = (0..50).filter(|_| uniform.sample(&s, false, &mut r).unwrap().label.unwrap().data().contains(&2.0)).count();
    assert!(hits < 10, "{hits}");
    // A patch larger than the image is centred and padded.
    let big = PatchSampler { patch: vec![44, 40, 24], sampling: Sampling::Uniform }.sample(&s, false, &mut r).unwrap();
    assert_eq!(big.image.get(&[2, 0, 2]), 0.0);
    assert_eq!(big.image.get(&[3, 0, 2]), 1.0);
}

fn write_nifti(path: &Path, img: &Image) {
    nifti::save(path, img, nifti::NiftiType::F32).unwrap();
}

fn small_case(dir: &Path, name: &str, seed: usize) -> (Image, Image) {
    let img = volume([12, 10, 8], |x, y, z| ((x + y * 2 + z * 3 + seed) % 7) as f32);
    let lab = volume([12, 10, 8], |x, y, z| ((x > 5 && y > 4 && z > 3) as u8 + (x < 2) as u8 * 2) as f32);
    std::fs::create_dir_all(dir).unwrap();
    let _ = name;
    (img, lab)
}

#[test]
fn nnunet_and_msd_layouts_read_as_is() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for d in ["imagesTr", "labelsTr", "imagesTs"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    for (i, id) in ["brain_001", "brain_002"].iter().enumerate() {
        let (img, lab) = small_case(r, id, i);
        write_nifti(&r.join(format!("imagesTr/{id}_0000.nii.gz")), &img);
        write_nifti(&r.join(format!("imagesTr/{id}_0001.nii.gz")), &img);
        write_nifti(&r.join(format!("labelsTr/{id}.nii.gz")), &lab);
    }
    let (img, _) = small_case(r, "t", 9);
    write_nifti(&r.join("imagesTs/brain_101_0000.nii.gz"), &img);
    write_nifti(&r.join("imagesTs/brain_101_0001.nii.gz"), &img);
    std::fs::write(
        r.join("dataset.json"),
        r#"{"channel_names": {"0": "T1", "1": "FLAIR"}, "labels": {"background": 0, "lesion": 1, "edge": 2},
            "numTraining": 2, "file_ending": ".nii.gz"}"#,
    )
    .unwrap();
    let ds = msd::open(r).unwrap();
    assert_eq!(ds.channels, vec!["T1", "FLAIR"]);
    assert_eq!(ds.label_names.get(&2).map(String::as_str), Some("edge"));
    assert_eq!(ds.training.len(), 2);
    assert_eq!(ds.test.len(), 1);
    assert_eq!(ds.test[0].id, "brain_101");
    let s = load_case(&ds.training[1], &Pipeline::default()).unwrap();
    assert_eq!(s.image.channels(), 2);
    assert_eq!(s.label.unwrap().data().iter().filter(|&&v| v == 2.0).count(), 2 * 10 * 8);
    // A missing channel file is named.
    std::fs::remove_file(r.join("imagesTr/brain_002_0001.nii.gz")).unwrap();
    let err = msd::open(r).unwrap_err().to_string();
    assert!(err.contains("brain_002_0001.nii.gz") && err.contains("dataset.json"), "{err}");

    // The older MSD form: lists in dataset.json, channels in one file.
    let m = tempfile::tempdir().unwrap();
    let mr = m.path();
    std::fs::create_dir_all(mr.join("imagesTr")).unwrap();
    std::fs::create_dir_all(mr.join("labelsTr")).unwrap();
    let (img, lab) = small_case(mr, "x", 1);
    write_nifti(&mr.join("imagesTr/hippo_3.nii.gz"), &img);
    write_nifti(&mr.join("labelsTr/hippo_3.nii.gz"), &lab);
    std::fs::write(
        mr.join("dataset.json"),
        r#"{"name": "Hippocampus", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
            "numTraining": 1, "training": [{"image": "./imagesTr/hippo_3.nii.gz", "label": "./labelsTr/hippo_3.nii.gz"}],
            "test": ["./imagesTs/hippo_9.nii.gz"]}"#,
    )
    .unwrap();
    let ds = msd::open(mr).unwrap();
    assert_eq!(ds.name.as_deref(), Some("Hippocampus"));
    assert_eq!(ds.training[0].id, "hippo_3");
    assert_eq!(ds.label_names[&2], "Posterior");
    assert!(ds.test.is_empty()); // listed but absent
}

#[test]
fn manifest_and_patient_level_folds() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = String::from("image,label,patient_id,case_id,stratum\n");
    for i in 0..12 {
        std::fs::write(dir.path().join(format!("im{i}.nii")), b"x").unwrap();
        rows += &format!("im{i}.nii,,P{},c{i},{}\n", i / 2, if (i / 2) % 2 == 0 { "tumour" } else { "healthy" });
    }
    let manifest = dir.path().join("cases.csv");
    std::fs::write(&manifest, &rows).unwrap();
    let cases = msd::read_manifest(&manifest).unwrap();
    assert_eq!(cases.len(), 12);
    assert_eq!(cases[3].patient, "P1");
    for folds in [kfold(&cases, 3, 7).unwrap(), stratified_kfold(&cases, 3, 7).unwrap()] {
        let mut all_val: Vec<String> = folds.iter().flat_map(|f| f.val.clone()).collect();
        all_val.sort();
        let mut ids: Vec<String> = cases.iter().map(|c| c.id.clone()).collect();
        ids.sort();
        assert_eq!(all_val, ids, "every case validates exactly once");
        for f in &folds {
            assert_eq!(f.val.len(), 4);
            for c in &cases {
                let in_val = f.val.contains(&c.id);
                let partner = cases.iter().find(|o| o.patient == c.patient && o.id != c.id).unwrap();
                assert_eq!(in_val, f.val.contains(&partner.id), "patient {} split", c.patient);
                assert_ne!(in_val, f.train.contains(&c.id));
            }
        }
        let path = dir.path().join("splits.json");
        write_splits(&path, &folds).unwrap();
        assert_eq!(read_splits(&path).unwrap(), folds);
    }
    // Stratified: the three tumour patients (P0, P2, P4) land in three different folds.
    let strat = stratified_kfold(&cases, 3, 1).unwrap();
    for f in &strat {
        assert_eq!(f.val.iter().filter(|id| ["c0", "c4", "c8"].contains(&id.as_str())).count(), 1);
        assert_eq!(f.val.iter().filter(|id| ["c2", "c6", "c10"].contains(&id.as_str())).count(), 1);
    }
    assert!(kfold(&cases, 7, 0).is_err()); // more folds than patients
    std::fs::write(dir.path().join("bad.json"), r#"[{"train": ["a", "b"], "val": ["b"]}]"#).unwrap();
    assert!(read_splits(&dir.path().join("bad.json")).unwrap_err().to_string().contains("both"));
    std::fs::write(dir.path().join("missing.csv"), "image,patient_id\nnot_there.nii,P\n").unwrap();
    assert!(msd::read_manifest(&dir.path().join("missing.csv")).unwrap_err().to_string().contains("not_there.nii"));
}

#[test]
fn disk_cache_is_keyed_by_content_and_settings_and_maps_patches() {
    let dir = tempfile::tempdir().unwrap();
    let (img, lab) = small_case(dir.path(), "c", 3);
    let ip = dir.path().join("img.nii");
    let lp = dir.path().join("lab.nii");
    write_nifti(&ip, &img);
    write_nifti(&lp, &lab);
    let case = Case { id: "c".into(), patient: "c".into(), images: vec![ip.clone()], label: Some(lp.clone()), stratum: None };
    let cache = DiskCache::new(dir.path().join("cache")).unwrap();
    let pre = Pipeline { transforms: vec![Transform::ZScore { mask: Default::default() }] };
    let k1 = cache.key(&[&ip, &lp], &pre).unwrap();
    let other = Pipeline { transforms: vec![Transform::MinMax { min: 0.0, max: 1.0 }] };
    assert_ne!(k1, cache.key(&[&ip, &lp], &other).unwrap());
    let mut computed = 0;
    let v = cache
        .get_or_insert(&k1, || {
            computed += 1;
            load_case(&case, &pre)
        })
        .unwrap();
    let v2 = cache
        .get_or_insert(&k1, || {
            computed += 1;
            load_case(&case, &pre)
        })
        .unwrap();
    assert_eq!(computed, 1);
    assert!(matches!(v2, Volume::Mapped { .. }));
    let mem = Volume::in_memory(load_case(&case, &pre).unwrap());
    for (start, size) in [(vec![0i64, 0, 0], vec![12usize, 10, 8]), (vec![-3, 4, 5], vec![6, 9, 7])] {
        assert_eq!(v.patch(&start, &size).unwrap(), mem.patch(&start, &size).unwrap());
    }
    assert_eq!(v.locations(), mem.locations());
    assert_eq!(v.locations()[&2].len(), 2 * 10 * 8);
    // A changed input file gives another key: no stale data.
    let mut changed = img.clone().into_data();
    changed[0] += 1.0;
    write_nifti(&ip, &Image::new(changed, img.shape().to_vec(), 1, *img.affine(), "float32").unwrap());
    std::thread::sleep(std::time::Duration::from_millis(20));
    let fresh = DiskCache::new(dir.path().join("cache")).unwrap();
    assert_ne!(fresh.key(&[&ip, &lp], &pre).unwrap(), k1);
    // A damaged entry is recomputed.
    let entry = dir.path().join("cache").join(format!("{k1}.vxc"));
    let bytes = std::fs::read(&entry).unwrap();
    std::fs::write(&entry, &bytes[..bytes.len() / 2]).unwrap();
    let mut again = 0;
    cache
        .get_or_insert(&k1, || {
            again += 1;
            load_case(&case, &pre)
        })
        .unwrap();
    assert_eq!(again, 1);
    // The RAM cache keeps what fits its budget, least recently used out first.
    let ram = MemoryCache::new(img.voxels() * 8 * 2 + 10);
    for key in ["a", "b", "c"] {
        ram.get_or_insert(key, || Ok(Volume::in_memory(load_case(&case, &Pipeline::default())?))).unwrap();
    }
    assert_eq!(ram.used(), img.voxels() * 8 * 2);
    let mut recomputed = false;
    ram.get_or_insert("a", || {
        recomputed = true;
        Ok(Volume::in_memory(load_case(&case, &Pipeline::default())?))
    })
    .unwrap();
    assert!(recomputed, "a was evicted");
}

#[test]
fn loader_is_ordered_reproducible_and_balanced() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    for i in 0..3 {
        let (img, lab) = small_case(dir.path(), "c", i);
        let ip = dir.path().join(format!("img{i}.nii.gz"));
        let lp = dir.path().join(format!("lab{i}.nii.gz"));
        write_nifti(&ip, &img);
        write_nifti(&lp, &lab);
        cases.push(Case { id: format!("c{i}"), patient: format!("p{i}"), images: vec![ip], label: Some(lp), stratum: None });
    }
    let pre = Pipeline::default();
    let augment = Pipeline { transforms: vec![Transform::RandFlip { prob: 0.5, axes: vec![0, 1, 2] }] };
    let config = |threads| LoaderConfig {
        sampler: PatchSampler { patch: vec![4, 4, 4], sampling: Sampling::LabelBalanced { foreground: 0.5 } },
        augment: augment.clone(),
        batch: 4,
        threads,
        seed: 11,
    };
    let collect = |cases: &Cases, threads| {
        let mut out = Vec::new();
        PatchLoader::new(cases, config(threads))
            .run(2, 16, |i, s| {
                out.push((i, s));
                Ok(())
            })
            .unwrap();
        out
    };
    let files = Cases::Files { cases: &cases, preprocess: &pre };
    let one = collect(&files, 1);
    let two = collect(&files, 3);
    assert_eq!(one, two);
    assert_eq!(one.iter().map(|(i, _)| *i).collect::<Vec<_>>(), (0..16).collect::<Vec<_>>());
    let disk = DiskCache::new(dir.path().join("cache")).unwrap();
    let cached = Cases::Cached { cases: &cases, preprocess: &pre, disk: &disk, memory: None };
    assert_eq!(collect(&cached, 2), one, "the cache changes nothing but speed");
    // The last half of every batch is centred on foreground.
    for (i, s) in &one {
        if i % 4 >= 2 {
            assert!(s.label.as_ref().unwrap().data().iter().any(|&v| v > 0.0), "patch {i}");
        }
    }
    // An error stops the run and is returned.
    let broken = vec![Case { id: "x".into(), patient: "x".into(), images: vec![dir.path().join("nope.nii")], label: None, stratum: None }];
    let bad = Cases::Files { cases: &broken, preprocess: &pre };
    let err = PatchLoader::new(&bad, config(2)).run(0, 8, |_, _| Ok(())).unwrap_err().to_string();
    assert!(err.contains("nope.nii"), "{err}");
}
