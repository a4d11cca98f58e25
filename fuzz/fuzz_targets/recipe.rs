//! Fuzzes the recipe parsers of every task (TOML): any text must give a recipe or an error.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let base = std::path::Path::new("/nonexistent");
    let _ = vesalius_cadx::recipe::Recipe::from_toml(text);
    let _ = vesalius_segmentation::recipe::SegRecipe::from_toml(text, base);
    let _ = vesalius_registration::recipe::RegRecipe::from_toml(text, base);
    let _ = vesalius_train::recipe::changed_keys(text, "seed = 1\n");
});
