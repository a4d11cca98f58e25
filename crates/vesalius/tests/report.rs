//! `vesalius report` in a real browser: headless Chromium (Debian's package; `cargo xtask ci` installs it when it is
//! missing) loads the reports of a table, a survival, two regression (continuous and ordinal), a treatment-response, a
//! volume-classification, an image-classification, a segmentation, an enhancement, a registration and a detection run
//! from their files, and the test checks that every figure has a size, that no script error or console message occurs,
//! that no request leaves the file (Chromium's network log holds nothing beyond what the browser itself asks for on an
//! empty page), and that a screenshot is not blank. A page built to fail
//! each check shows that the checks can fail.
#![allow(clippy::unwrap_used)]
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn vesalius(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vesalius")).args(args).output().unwrap()
}

fn chromium() -> PathBuf {
    let candidates = [std::env::var("CHROMIUM").unwrap_or_default(), "/usr/bin/chromium".into(), "/usr/bin/chromium-browser".into()];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("Chromium is needed for the report test: `cargo xtask ci` installs Debian's chromium package"))
}

/// What the browser saw of a page.
struct Visit {
    dom: String,
    console: Vec<String>,
    hosts: BTreeSet<String>,
}

fn visit(page: &Path, work: &Path) -> Visit {
    let profile = tempfile::tempdir_in(work).unwrap();
    let net = profile.path().join("net.json");
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().join("profile").display()))
        .arg(format!("--log-net-log={}", net.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.contains(":CONSOLE")).map(String::from).collect();
    let log = std::fs::read_to_string(&net).unwrap_or_default();
    let hosts = log
        .split("\"url\":\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .filter(|u| u.starts_with("http"))
        .filter_map(|u| u.split('/').nth(2).map(String::from))
        .collect();
    Visit { dom: String::from_utf8_lossy(&out.stdout).into_owned(), console, hosts }
}

/// Distinct colours of a screenshot of the page.
fn screenshot_colours(page: &Path, work: &Path) -> usize {
    let profile = tempfile::tempdir_in(work).unwrap();
    let shot = profile.path().join("shot.png");
    let status = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().join("profile").display()))
        .arg("--window-size=1280,2400")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(shot.is_file(), "no screenshot: {}", String::from_utf8_lossy(&status.stderr));
    let img = image::open(&shot).unwrap().to_rgb8();
    img.pixels().map(|p| p.0).collect::<BTreeSet<[u8; 3]>>().len()
}

fn body_attr<'a>(dom: &'a str, name: &str) -> Option<&'a str> {
    let body = &dom[dom.find("<body")?..];
    let body = &body[..body.find('>')?];
    let start = body.find(&format!("{name}=\""))? + name.len() + 2;
    Some(&body[start..start + body[start..].find('"')?])
}

/// Checks a report in the browser; returns the number of figures.
fn check(page: &Path, work: &Path, baseline: &BTreeSet<String>) -> usize {
    let v = visit(page, work);
    let figures = body_attr(&v.dom, "data-figures").unwrap_or_else(|| panic!("{}: the page's script did not run", page.display()));
    let (shown, total) = figures.split_once('/').unwrap();
    assert_eq!(shown, total, "{}: figures without a size", page.display());
    assert_eq!(body_attr(&v.dom, "data-errors"), Some("none"), "{}", page.display());
    assert!(v.console.is_empty(), "{}: {:?}", page.display(), v.console);
    let extra: Vec<&String> = v.hosts.difference(baseline).collect();
    assert!(extra.is_empty(), "{}: requests to {extra:?}", page.display());
    assert!(screenshot_colours(page, work) > 100, "{}: a blank screenshot", page.display());
    total.parse().unwrap()
}

#[test]
fn reports_load_in_chromium_without_errors_or_requests() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    // what the browser asks for by itself on an empty page
    let empty = work.join("empty.html");
    std::fs::write(&empty, "<!doctype html><html><body></body></html>").unwrap();
    let baseline = visit(&empty, work).hosts;

    // the checks fail on a page that fetches an image and throws
    let bad = work.join("bad.html");
    std::fs::write(&bad, "<!doctype html><html><body><img src=\"http://example.invalid/x.png\"><script>console.error('boom'); missing();</script></body></html>").unwrap();
    let v = visit(&bad, work);
    assert!(v.hosts.contains("example.invalid"), "{:?}", v.hosts);
    assert!(v.console.iter().any(|l| l.contains("boom")) && v.console.iter().any(|l| l.contains("Uncaught")), "{:?}", v.console);

    // a table run: six models, ROC with bands, calibration, confusion matrices, every case
    let table_run = work.join("lidc");
    let o = vesalius(&["train", root().join("recipes/lidc-malignancy.toml").to_str().unwrap(), "--out", table_run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let page = work.join("lidc.html");
    let o = vesalius(&["report", "--run", table_run.to_str().unwrap(), "-o", page.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(&page).unwrap();
    insta::assert_snapshot!("report_outline_lidc", vesalius_report::outline(&html));
    assert_eq!(check(&page, work, &baseline), 2);

    // a survival run: metrics with intervals and the recipe
    let surv = work.join("gbsg2");
    let o = vesalius(&["train", root().join("recipes/gbsg2-cox.toml").to_str().unwrap(), "--out", surv.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let page = work.join("gbsg2.html");
    assert!(vesalius(&["report", "--run", surv.to_str().unwrap(), "-o", page.to_str().unwrap()]).status.success());
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("<h2>Test metrics</h2>") && html.contains("<h2>Recipe</h2>"));
    let outline = vesalius_report::outline(&html);
    assert!(outline.contains("## Survival") && outline.contains("log-rank χ²"), "{outline}");
    assert!(outline.contains("mean prediction against its Kaplan–Meier survival"), "{outline}");
    assert_eq!(check(&page, work, &baseline), 2);

    // regression runs: predicted against observed (continuous), level confusion matrices (ordinal)
    for (name, arch) in [("actg175-cd4", "[\"linear\", \"knn\"]"), ("lidc-malignancy-levels", "[\"linear\", \"knn\"]")] {
        let text = std::fs::read_to_string(root().join(format!("recipes/{name}.toml")))
            .unwrap()
            .replace("\"../fixtures", &format!("\"{}/fixtures", root().display()));
        let start = text.find("arch = ").unwrap();
        let end = start + text[start..].find('\n').unwrap();
        let recipe = work.join(format!("{name}.toml"));
        std::fs::write(&recipe, format!("{}arch = {arch}{}", &text[..start], &text[end..]).replace("bootstrap = 1000", "bootstrap = 50"))
            .unwrap();
        let run = work.join(name);
        let o = vesalius(&["train", recipe.to_str().unwrap(), "--out", run.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let page = work.join(format!("{name}.html"));
        assert!(vesalius(&["report", "--run", run.to_str().unwrap(), "-o", page.to_str().unwrap()]).status.success());
        let html = std::fs::read_to_string(&page).unwrap();
        assert!(html.contains("Task: <b>regression</b>"));
        let outline = vesalius_report::outline(&html);
        if name == "actg175-cd4" {
            assert!(outline.contains("## Predicted against observed"), "{outline}");
            assert_eq!(check(&page, work, &baseline), 1);
        } else {
            assert!(outline.contains("Levels of malignancy predicted by linear") && outline.contains("predicted by knn"), "{outline}");
            assert_eq!(check(&page, work, &baseline), 0);
        }
    }

    // a response run (the predicted change against the true one) and a volume-classification run (two networks)
    for (name, edits) in [
        (
            "tumour-response",
            vec![
                ("lesions = 60", "lesions = 8"),
                ("epochs = 20", "epochs = 1"),
                ("pairs = 256", "pairs = 32"),
                ("pairs_per_slice = 10", "pairs_per_slice = 2"),
            ],
        ),
        ("lesion-volumes", vec![("cases = [1024, 128, 256]", "cases = [8, 4, 6]"), ("epochs = 20", "epochs = 1")]),
    ] {
        let mut text = std::fs::read_to_string(root().join(format!("recipes/{name}.toml")))
            .unwrap()
            .replace("\"../fixtures", &format!("\"{}/fixtures", root().display()))
            .replace("bootstrap = 1000", "bootstrap = 20");
        for (a, b) in edits {
            text = text.replace(a, b);
        }
        let recipe = work.join(format!("{name}.toml"));
        std::fs::write(&recipe, text).unwrap();
        let run = work.join(name);
        let o = vesalius(&["train", recipe.to_str().unwrap(), "--out", run.to_str().unwrap(), "--quiet"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let page = work.join(format!("{name}.html"));
        assert!(vesalius(&["report", "--run", run.to_str().unwrap(), "-o", page.to_str().unwrap()]).status.success());
        let outline = vesalius_report::outline(&std::fs::read_to_string(&page).unwrap());
        if name == "tumour-response" {
            assert!(outline.contains("## Predicted against observed") && outline.contains("ln(area after / area before)"), "{outline}");
            assert!(check(&page, work, &baseline) >= 1);
        } else {
            assert!(outline.contains("The test set (6 cubes)") && outline.contains("Confusion matrix of crnn"), "{outline}");
            check(&page, work, &baseline);
        }
    }

    // an image classifier with its learning curves, confusion matrix and explanation maps written into the run
    let fx = root().join("fixtures/mni152");
    let recipe = work.join("tiny.toml");
    std::fs::write(
        &recipe,
        format!(
            "name = \"tiny\"\nseed = 5\n[data]\nkind = \"volume-patches\"\nimage = {:?}\nlabels = {:?}\nmask = {:?}\n\
             classes = [\"outside brain\", \"other brain\", \"grey matter\", \"white matter\"]\npatch = 28\nper_class = 20\n\
             slabs = {{ train = [40, 60], val = [88, 92], test = [120, 124] }}\n[model]\narch = \"lenet5\"\n[train]\nepochs = 2\n\
             batch_size = 32\noptimizer = {{ kind = \"adam\", lr = 0.001 }}\n[eval]\nbootstrap = 100\n",
            fx.join("mni152_t1.nii.gz"),
            fx.join("mni152_tissue_labels.nii.gz"),
            fx.join("mni152_brain_mask.nii.gz")
        ),
    )
    .unwrap();
    let run = work.join("tiny");
    let o = vesalius(&["train", recipe.to_str().unwrap(), "--out", run.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let png = root().join("fixtures/itk/BrainProtonDensitySlice.png");
    for method in ["gradcam", "occlusion"] {
        let o = vesalius(&[
            "explain",
            "--run",
            run.to_str().unwrap(),
            png.to_str().unwrap(),
            "--method",
            method,
            "-o",
            run.join("explain").to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let page = work.join("tiny.html");
    assert!(vesalius(&["report", "--run", run.to_str().unwrap(), "-o", page.to_str().unwrap()]).status.success());
    let html = std::fs::read_to_string(&page).unwrap();
    let outline = vesalius_report::outline(&html);
    for part in [
        "## Learning curves",
        "table: Confusion matrix on the test set",
        "figure: explain/BrainProtonDensitySlice_gradcam.png",
        "## Images",
    ] {
        assert!(outline.contains(part), "{part} missing from\n{outline}");
    }
    assert_eq!(check(&page, work, &baseline), 4);

    // a segmentation run scored on its validation case: learning curves and the tri-planar overlay figure
    let fx = root().join("fixtures/nifti/pyradiomics");
    let recipe = work.join("tumour.toml");
    std::fs::write(
        &recipe,
        format!(
            "task = \"segmentation\"\n[data]\ncases = [\n  {{ id = \"brain1\", image = [\"{0}/brain1_image.nii.gz\"], label = \"{0}/brain1_label.nii.gz\" }},\n\
             {{ id = \"brain2\", image = [\"{0}/brain2_image.nii.gz\"], label = \"{0}/brain2_label.nii.gz\" }},\n]\nlabels = {{ background = 0, tumour = 1 }}\n\
             unlabelled = [{{ id = \"anatomical\", image = [\"{1}\"] }}]\n\
             folds = 2\n[plan]\ntarget_spacing = [3.2, 3.2, 6.5]\npatch = [32, 32, 8]\nbatch = 2\nfeatures = [4, 8]\n[train]\nepochs = 2\niterations = 3\n\
             foreground_share = 0.5\n",
            fx.display(),
            root().join("fixtures/nifti/nibabel/anatomical.nii").display()
        ),
    )
    .unwrap();
    let seg = work.join("tumour");
    assert!(vesalius(&["train", recipe.to_str().unwrap(), "--out", seg.to_str().unwrap(), "--quiet"]).status.success());
    assert!(vesalius(&["evaluate", "--run", seg.to_str().unwrap(), "--split", "val"]).status.success());
    // No labelled test set: the test evaluation pictures the unlabelled image only.
    let out = vesalius(&["evaluate", "--run", seg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("unlabelled anatomical: tumour ") && printed.contains("figures/unlabelled-anatomical.png"), "{printed}");
    let page = work.join("tumour.html");
    assert!(vesalius(&["report", "--run", seg.to_str().unwrap(), "-o", page.to_str().unwrap()]).status.success());
    let outline = vesalius_report::outline(&std::fs::read_to_string(&page).unwrap());
    assert!(outline.contains("## Learning curves") && outline.contains("figure: figures/validation-"), "{outline}");
    assert!(outline.contains("figure: figures/unlabelled-anatomical"), "{outline}");
    assert!(outline.contains("table: Per-case metrics on the validation set (cases;"), "{outline}");
    assert!(check(&page, work, &baseline) >= 2);

    // an enhancement run: its test case's input / output / reference / difference panels
    let recipe = work.join("denoise.toml");
    std::fs::write(
        &recipe,
        format!(
            "task = \"enhancement\"\n[data]\nimages = [{{ image = \"{}\" }}]\nintensity = [-1024.0, 3072.0]\n\
             test_band = {{ axis = 1, start = 0, end = 24 }}\nval_band = {{ axis = 1, start = 104, end = 128 }}\ntrain_realisations = 2\n\
             eval_realisations = 1\n[degrade]\nmodel = \"rician\"\nsigma = 100.0\n[model]\nfeatures = 4\n[train]\nepochs = 2\n\
             iterations = 3\nbatch = 2\npatch = 32\nlr = 1e-3\n",
            root().join("fixtures/dicom/single/CT_small.dcm").display()
        ),
    )
    .unwrap();
    let enh = work.join("denoise");
    assert!(vesalius(&["train", recipe.to_str().unwrap(), "--out", enh.to_str().unwrap(), "--quiet"]).status.success());
    let page = work.join("denoise.html");
    assert!(vesalius(&["report", "--run", enh.to_str().unwrap(), "-o", page.to_str().unwrap()]).status.success());
    let outline = vesalius_report::outline(&std::fs::read_to_string(&page).unwrap());
    assert!(outline.contains("figure: figures/test-"), "{outline}");
    assert!(check(&page, work, &baseline) >= 2);

    // a learned-registration run scored on its test pairs: the seven-panel figure of each pair
    let mni = root().join("fixtures/mni152");
    let recipe = work.join("vm.toml");
    std::fs::write(
        &recipe,
        format!(
            "task = \"registration\"\n[data]\nspacing = [8.0, 8.0, 8.0]\nshape = [24, 32, 24]\n\
             synthetic = {{ image = \"{0}/mni152_t1.nii.gz\", labels = \"{0}/mni152_tissue_labels.nii.gz\" }}\n[model]\n\
             encoder = [4, 8, 8]\ndecoder = [8, 8, 8, 4]\n[train]\nsteps = 6\nval_every = 3\nvalidation = 2\ntest = 2\nlearning_rate = 1e-3\n",
            mni.display()
        ),
    )
    .unwrap();
    let reg = work.join("vm");
    assert!(vesalius(&["train", recipe.to_str().unwrap(), "--out", reg.to_str().unwrap(), "--quiet"]).status.success());
    assert!(vesalius(&["evaluate", "--run", reg.to_str().unwrap()]).status.success());
    let page = work.join("vm.html");
    assert!(vesalius(&["report", "--run", reg.to_str().unwrap(), "-o", page.to_str().unwrap()]).status.success());
    let outline = vesalius_report::outline(&std::fs::read_to_string(&page).unwrap());
    assert!(outline.contains("figure: figures/test-"), "{outline}");
    assert!(outline.contains("table: Per-case metrics on the test set (learned.pairs;"), "{outline}");
    assert!(check(&page, work, &baseline) >= 3);

    // a detection run: the FROC curve of its test scan and its overlays
    let nuclei = root().join("fixtures/stardist");
    let recipe = work.join("det.toml");
    std::fs::write(
        &recipe,
        format!(
            "task = \"detection\"\n[data]\nimages = [{{ id = \"dsb\", image = \"{0}/nuclei.png\", instances = \"{0}/nuclei_labels.png\" }}]\n\
             val_band = {{ axis = 1, start = 384, end = 448 }}\ntest_band = {{ axis = 1, start = 448, end = 512 }}\n[model]\nchannels = [8, 16]\n\
             [train]\nepochs = 1\niterations = 2\nbatch = 2\npatch = [32, 32]\n[eval]\nmin_probability = 0.001\n",
            nuclei.display()
        ),
    )
    .unwrap();
    let det = work.join("det");
    assert!(vesalius(&["train", recipe.to_str().unwrap(), "--out", det.to_str().unwrap(), "--quiet"]).status.success());
    let page = work.join("det.html");
    assert!(vesalius(&["report", "--run", det.to_str().unwrap(), "-o", page.to_str().unwrap()]).status.success());
    let outline = vesalius_report::outline(&std::fs::read_to_string(&page).unwrap());
    assert!(outline.contains("## FROC"), "{outline}");
    assert!(check(&page, work, &baseline) >= 2);

    // a folder with nothing to report is refused
    let o = vesalius(&["report", "--run", work.join("empty-run").to_str().unwrap(), "-o", work.join("x.html").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
}
