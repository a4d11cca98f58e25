//! `vesalius tune`: hyper-parameter search over a recipe ([`vesalius_train::tune`]), each trial trained by a child
//! `vesalius train TRIAL.toml --out RUN --quiet --max-epochs E` process (so trials run side by side, and a trial's
//! failure stays its own), its output kept in the trial's `train.log`.
use std::path::{Path, PathBuf};
use std::process::Command;

use vesalius_train::TrainError;
use vesalius_train::tune::{Progress, Runner, Sampler, Scheduler, Space, Status, Study, StudyConfig, Summary};

use crate::CliError;

/// The settings of `vesalius tune` beside the recipe, the space and the study folder.
#[derive(Clone, Debug, clap::Args)]
pub struct TuneArgs {
    /// Trials (configurations drawn).
    #[arg(long, default_value_t = 20)]
    pub trials: usize,
    /// How trials share epochs: none, hyperband, asha or top_k.
    #[arg(long, default_value = "none")]
    pub scheduler: String,
    /// How points are drawn: sobol or random.
    #[arg(long, default_value = "sobol")]
    pub sampler: String,
    /// Stop a trial when the probability that it beats the best complete trial falls below --curve-threshold
    /// (scheduler none).
    #[arg(long)]
    pub curve_stop: bool,
    /// Probability threshold of --curve-stop.
    #[arg(long, default_value_t = 0.05)]
    pub curve_threshold: f64,
    /// Trials trained at once.
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Reduction factor of the schedulers.
    #[arg(long, default_value_t = 3)]
    pub eta: usize,
    /// Epochs of the schedulers' first rung.
    #[arg(long, default_value_t = 1)]
    pub min_epochs: usize,
    /// The recipe key holding the number of epochs (default: train.epochs, else model.epochs).
    #[arg(long)]
    pub budget_key: Option<String>,
}

fn from_train(e: TrainError) -> CliError {
    match e {
        TrainError::Input(m) => CliError::Usage(m),
        other => CliError::Internal(other.to_string()),
    }
}

/// The number of epochs a recipe trains for, under `key` or the usual keys.
pub fn budget(recipe: &str, key: Option<&str>) -> Result<(String, usize), CliError> {
    let table: toml::Table = recipe.parse().map_err(|e| CliError::Usage(format!("recipe: {e}")))?;
    let lookup = |k: &str| -> Option<usize> {
        let mut v = toml::Value::Table(table.clone());
        for part in k.split('.') {
            v = v.get(part)?.clone();
        }
        v.as_integer().and_then(|i| usize::try_from(i).ok())
    };
    let keys: Vec<&str> = match key {
        Some(k) => vec![k],
        None => vec!["train.epochs", "model.epochs"],
    };
    keys.iter().find_map(|k| lookup(k).map(|n| (k.to_string(), n))).ok_or_else(|| {
        CliError::Usage(format!(
            "the recipe sets no number of epochs under {}: name it with --budget-key",
            keys.iter().map(|k| format!("\"{k}\"")).collect::<Vec<_>>().join(" or ")
        ))
    })
}

/// Trains trials with child processes of this program.
struct ChildRunner {
    exe: PathBuf,
    backend: Option<String>,
}

impl Runner for ChildRunner {
    fn run(&self, recipe: &Path, run_dir: &Path, epochs: usize) -> Result<Progress, String> {
        let log_path = run_dir.parent().unwrap_or(Path::new(".")).join("train.log");
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&self.exe);
        if let Some(b) = &self.backend {
            cmd.args(["--backend", b]);
        }
        cmd.arg("train").arg(recipe).arg("--out").arg(run_dir).arg("--quiet").arg("--max-epochs").arg(epochs.to_string());
        let status = cmd.stdout(log).stderr(err).status().map_err(|e| format!("{}: {e}", self.exe.display()))?;
        if !status.success() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last = text.lines().rev().find(|l| l.starts_with("error")).unwrap_or("training failed");
            return Err(format!("{last} (see {})", log_path.display()));
        }
        if !run_dir.join("log.jsonl").is_file() {
            return Err("the recipe's task does not train on the engine (no log.jsonl): tune needs validation scores per epoch".into());
        }
        Progress::read(run_dir).map_err(|e| e.to_string())
    }
}

/// `vesalius tune RECIPE --space SPACE -o STUDY …`.
pub fn tune(backend: Option<String>, recipe: &Path, space: &Path, out: &Path, args: &TuneArgs) -> Result<Summary, CliError> {
    let text = std::fs::read_to_string(recipe).map_err(|e| CliError::Usage(format!("{}: {e}", recipe.display())))?;
    // Paths in the trial recipes are made absolute: trials live in other folders.
    let text = absolute_paths(&text, recipe.parent().unwrap_or(Path::new(".")));
    let space_text = std::fs::read_to_string(space).map_err(|e| CliError::Usage(format!("{}: {e}", space.display())))?;
    let space = Space::from_toml(&space_text).map_err(|e| CliError::Usage(format!("{}: {e}", space.display())))?;
    let (key, epochs) = budget(&text, args.budget_key.as_deref())?;
    if space.params.contains_key(&key) {
        return Err(CliError::Usage(format!("{key} is the trials' budget of epochs; it cannot also be searched")));
    }
    let scheduler = match args.scheduler.as_str() {
        "none" => Scheduler::None,
        "hyperband" => Scheduler::Hyperband,
        "asha" => Scheduler::Asha,
        "top_k" => Scheduler::TopK,
        other => return Err(CliError::Usage(format!("unknown --scheduler '{other}' (none, hyperband, asha, top_k)"))),
    };
    let sampler = match args.sampler.as_str() {
        "sobol" => Sampler::Sobol,
        "random" => Sampler::Random,
        other => return Err(CliError::Usage(format!("unknown --sampler '{other}' (sobol, random)"))),
    };
    let config = StudyConfig {
        trials: args.trials,
        scheduler,
        sampler,
        seed: args.seed,
        budget: epochs,
        eta: args.eta,
        min_epochs: args.min_epochs,
        curve_stop: args.curve_stop,
        curve_threshold: args.curve_threshold,
        parallel: args.parallel.max(1),
        ..StudyConfig::default()
    };
    let study = Study::open(out, &text, space, config).map_err(from_train)?;
    let exe = std::env::current_exe().map_err(|e| CliError::Internal(format!("this program's path: {e}")))?;
    let summary = study.run(&ChildRunner { exe, backend }).map_err(from_train)?;
    // Every trial failed: the recipe or the space is at fault, not one trial's values.
    if summary.trials.iter().all(|t| matches!(t.status, Status::Failed { .. })) {
        let first = summary.trials.iter().find_map(|t| match &t.status {
            Status::Failed { message } => Some(message.clone()),
            _ => None,
        });
        return Err(CliError::Usage(format!("every trial failed: {}", first.unwrap_or_default())));
    }
    Ok(summary)
}

/// The recipe with every relative path-like string value (one naming an existing file or folder relative to
/// `base`) made absolute.
fn absolute_paths(text: &str, base: &Path) -> String {
    fn walk(v: &mut toml::Value, base: &Path) {
        match v {
            toml::Value::String(s) => {
                let p = Path::new(s.as_str());
                if p.is_relative() && !s.is_empty() && base.join(p).exists() {
                    *s = std::path::absolute(base.join(p)).unwrap_or_else(|_| base.join(p)).to_string_lossy().to_string();
                }
            }
            toml::Value::Array(a) => a.iter_mut().for_each(|x| walk(x, base)),
            toml::Value::Table(t) => t.iter_mut().for_each(|(_, x)| walk(x, base)),
            _ => {}
        }
    }
    match text.parse::<toml::Table>() {
        Ok(t) => {
            let mut v = toml::Value::Table(t);
            walk(&mut v, base);
            toml::to_string(&v).unwrap_or_else(|_| text.to_string())
        }
        Err(_) => text.to_string(),
    }
}

/// The summary as printed: the best trial, the epochs trained, the trials by status, and the wall time.
pub fn format_summary(s: &Summary, seconds: f64) -> String {
    let mut out = String::new();
    match (s.best_trial, s.best_score) {
        (Some(t), Some(v)) => out.push_str(&format!("best trial {t}: validation score {v:.4}\n")),
        _ => out.push_str("no trial has a validation score\n"),
    }
    let statuses: Vec<String> = s.statuses.iter().map(|(k, v)| format!("{v} {k}")).collect();
    out.push_str(&format!("{} trials ({}), {} epochs trained, {seconds:.1} s\n", s.trials.len(), statuses.join(", "), s.epochs_trained));
    out
}
