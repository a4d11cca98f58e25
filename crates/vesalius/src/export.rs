//! `vesalius export`: a run's trained network as a safetensors file under torchvision, MONAI or Vesalius names,
//! for PyTorch (`model.load_state_dict(safetensors.torch.load_file(path))`) or for another run's `init`.
use std::path::Path;

use burn::module::Module;
use burn::tensor::backend::Backend;
use vesalius_cadx::run::{ClassificationRun, RunDir};
use vesalius_nets::transfer::{Layout, Naming, to_safetensors};

use crate::backend::BackendKind;
use crate::{CliError, commands, with_backend};

/// What was written.
pub struct Exported {
    /// The naming used.
    pub naming: Naming,
    /// Tensors written.
    pub tensors: usize,
}

/// `naming` when given, else torchvision's for the networks it names and Vesalius's otherwise.
fn choose(naming: Option<Naming>, layout: &Layout) -> Naming {
    naming.unwrap_or(match layout {
        Layout::ResNet { .. } | Layout::Vgg { .. } | Layout::AlexNet | Layout::GoogLeNet => Naming::Torchvision,
        Layout::UNet { .. } | Layout::Own(_) => Naming::Vesalius,
    })
}

fn write<B: Backend, M: Module<B>>(model: &M, layout: &Layout, naming: Option<Naming>, out: &Path) -> Result<Exported, CliError> {
    let naming = choose(naming, layout);
    let bytes = to_safetensors(model, layout, naming).map_err(|e| CliError::Usage(e.to_string()))?;
    vesalius_io::write_atomic(out, &bytes).map_err(|e| CliError::Internal(e.to_string()))?;
    let tensors = vesalius_nets::transfer::WeightFile::from_safetensors_bytes(&out.display().to_string(), bytes)
        .map_err(|e| CliError::Internal(e.to_string()))?
        .len();
    Ok(Exported { naming, tensors })
}

/// Exports the best model of a classification or segmentation run.
pub fn export(backend: BackendKind, run: &Path, naming: Option<Naming>, out: &Path) -> Result<Exported, CliError> {
    if commands::is_segmentation_run(run) {
        let dir = vesalius_segmentation::RunDir::new(run);
        let plans: vesalius_segmentation::plan::Plans = dir.read_json("plans.json")?;
        let recipe_path = dir.file("recipe.toml");
        let text = std::fs::read_to_string(&recipe_path).map_err(|e| CliError::Usage(format!("{}: {e}", recipe_path.display())))?;
        let recipe = vesalius_segmentation::recipe::SegRecipe::from_toml(&text, run)
            .map_err(|e| CliError::Usage(format!("{}: {e}", recipe_path.display())))?;
        if recipe.sae.is_some() {
            return Err(CliError::Usage(format!(
                "{}: export writes U-Net weights; this run's network is an [sae] patch auto-encoder",
                run.display()
            )));
        }
        return with_backend!(backend, |B, AB, device| {
            let model = vesalius_train::engine::load_module(plans.unet().init::<B>(&device), &dir.best_model(), &device)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            write(&model, &model.layout(), naming, out)
        });
    }
    let dir = RunDir::new(run);
    if !dir.file("run.json").is_file() || vesalius_cadx::tabular::is_run(run) {
        return Err(CliError::Usage(format!("{}: not an image classification or segmentation run", run.display())));
    }
    let info = dir.read_classifier_info()?;
    with_backend!(backend, |B, AB, device| {
        let model = dir.load_best::<B>(&info, &device)?;
        write(&model, &model.layout(), naming, out)
    })
}
