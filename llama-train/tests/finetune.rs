//! A short fine-tune of stories260K on a slice of SST: the loss goes down, the best-dev model
//! is saved and reproduces its dev predictions when reloaded, and a seed fixes the run.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use burn::backend::NdArray;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Tensor};
use llama_model::fixtures::fixture;
use llama_model::{load_checkpoint, LoadOptions, Tokenizer};
use llama_train::classify::classifier::FinetuneOption;
use llama_train::classify::finetune::resume::Position;
use llama_train::classify::finetune::{
    evaluate, finetune_with, load_classifier, FinetuneConfig, FinetuneData, FinetuneError,
    FinetuneOutcome, CLASSIFIER_CONFIG_FILE, FINETUNE_CONFIG_FILE,
};
use llama_train::data::sentences::{read_labelled_file, SentenceDataset};
use llama_train::report::metrics_log::{read_metrics, Split, METRICS_FILE};
use llama_train::run::control::RunControl;
use llama_train::run::resume_file::ResumeError;

/// What the CLI trains on (balanced checkpointing).
type TB = llama_train::TrainBackend<NdArray>;
type Inner = <TB as AutodiffBackend>::InnerBackend;

/// Runs one at a time: each uses every core. (Not for reproducibility: a run draws nothing
/// from the backend's generator, which is global to the process on ndarray.)
static RUN: Mutex<()> = Mutex::new(());

/// Seeds and draws from the backend's generator on another thread while `f` runs, as
/// another run or test in the same process may.
fn with_generator_busy<T>(f: impl FnOnce() -> T) -> T {
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let device = Default::default();
            let mut draws = 0u64;
            while !stop.load(Ordering::Relaxed) {
                TB::seed(&device, draws);
                let _ = Tensor::<TB, 1>::random([64], Distribution::Default, &device);
                draws += 1;
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            assert!(draws > 0);
        });
        let _stop = StopOnDrop(&stop);
        f()
    })
}

fn slice(file: &str, n: usize, tokenizer: &Tokenizer, config: &FinetuneConfig) -> SentenceDataset {
    let path = fixture(&format!("data/{file}"));
    let mut records = read_labelled_file(&path).expect("read data");
    records.truncate(n);
    SentenceDataset::from_records(records, &path, tokenizer, &config.data_options())
        .expect("tokenize")
}

fn data(config: &FinetuneConfig, train: usize, dev: usize, test: usize) -> FinetuneData {
    let tokenizer = Tokenizer::from_file(fixture("models/stories260K/tok512.bin")).expect("tok512");
    FinetuneData::new(
        slice("sst-train.txt", train, &tokenizer, config),
        slice("sst-dev.txt", dev, &tokenizer, config),
        (test > 0).then(|| slice("sst-test.txt", test, &tokenizer, config)),
        tokenizer.pad_id(),
    )
}

/// [`data`] with the five SST classes, which a short slice may not all contain.
fn data5(config: &FinetuneConfig, train: usize, dev: usize, test: usize) -> FinetuneData {
    FinetuneData {
        num_labels: 5,
        ..data(config, train, dev, test)
    }
}

fn run(config: &FinetuneConfig, data: &FinetuneData) -> FinetuneOutcome<Inner> {
    let start = std::time::Instant::now();
    let outcome = run_with(config, data, &RunControl::default()).expect("finetune");
    println!("fine-tune took {:.1} s", start.elapsed().as_secs_f64());
    outcome
}

/// [`finetune_with`] on stories260K; runs never overlap (see [`RUN`]).
fn run_with(
    config: &FinetuneConfig,
    data: &FinetuneData,
    control: &RunControl,
) -> Result<FinetuneOutcome<Inner>, FinetuneError> {
    let _guard = RUN.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    let base = load_checkpoint::<TB>(
        &fixture("models/stories260K/stories260K.bin"),
        &LoadOptions::default(),
        &device,
    )
    .expect("load stories260K");
    finetune_with(config, base.model, &base.config, data, &device, control)
}

/// Every weight of a classifier, flattened.
fn weights(outcome: &FinetuneOutcome<Inner>) -> Vec<f32> {
    use burn::module::Module;
    let mut all = Vec::new();
    let record = outcome.model.clone().into_record();
    let model = outcome.model.clone().load_record(record);
    model.visit(&mut Collect(&mut all));
    all
}

struct Collect<'a>(&'a mut Vec<f32>);

impl burn::module::ModuleVisitor<Inner> for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<Inner, D>>) {
        self.0
            .extend(param.val().into_data().to_vec::<f32>().expect("f32"));
    }
}

fn stopped_at(result: Result<FinetuneOutcome<Inner>, FinetuneError>) -> Position {
    match result {
        Err(FinetuneError::Stopped {
            at,
            interrupted: false,
            ..
        }) => at,
        Err(e) => panic!("expected a stop, got {e}"),
        Ok(_) => panic!("expected a stop, the run finished"),
    }
}

fn same_run(a: &FinetuneOutcome<Inner>, b: &FinetuneOutcome<Inner>) {
    assert_eq!(a.best_epoch, b.best_epoch);
    // Everything but the wall-clock time.
    let timeless = |o: &FinetuneOutcome<Inner>| {
        let mut epochs = o.epochs.clone();
        epochs.iter_mut().for_each(|e| e.train_seconds = 0.0);
        epochs
    };
    assert_eq!(timeless(a), timeless(b), "epoch summaries");
    assert_eq!(a.dev, b.dev);
    assert_eq!(a.test, b.test);
    let (wa, wb) = (weights(a), weights(b));
    assert_eq!(wa.len(), wb.len());
    assert!(wa == wb, "the best models differ");
}

fn config(dir: &Path) -> FinetuneConfig {
    FinetuneConfig::new(dir.to_path_buf())
        .with_epochs(2)
        .with_lr(1e-3)
        .with_batch_size(8)
        .with_seed(7)
        .with_max_sentence_len(Some(24))
        .with_log_every(0)
}

#[test]
fn finetune_learns_saves_the_best_model_and_is_reproducible() {
    let first = tempfile::tempdir().expect("tempdir");
    let second = tempfile::tempdir().expect("tempdir");
    let cfg = config(first.path());
    let data = data(&cfg, 64, 32, 16);
    assert_eq!(data.num_labels, 5);

    let a = run(&cfg, &data);
    for epoch in &a.epochs {
        println!("{epoch:?}");
    }

    // The training loss goes down.
    assert_eq!(a.epochs.len(), 2);
    let losses: Vec<f64> = a
        .epochs
        .iter()
        .map(|e| e.train_loss().expect("loss"))
        .collect();
    assert!(
        losses[1] < losses[0],
        "training loss did not decrease: {losses:?}"
    );

    // The best epoch is the one with the highest dev accuracy (the first of equals).
    let accuracies: Vec<f64> = a
        .epochs
        .iter()
        .map(|e| e.dev_accuracy().expect("acc"))
        .collect();
    let best = accuracies.iter().enumerate().fold(
        0,
        |best, (i, &acc)| if acc > accuracies[best] { i } else { best },
    );
    assert_eq!(a.best_epoch, best + 1, "dev accuracies {accuracies:?}");
    // The dev accuracy the Learner measured for that epoch is the returned model's.
    assert!(
        (a.dev.accuracy * 100.0 - accuracies[best]).abs() < 1e-9,
        "{} vs {accuracies:?}",
        a.dev.accuracy
    );

    // So is its dev macro-F1: the epoch value of the Learner's metric is exact.
    let f1 = a.epochs[best]
        .dev
        .get("Macro-F1")
        .copied()
        .expect("macro-F1");
    assert!(
        (a.dev.macro_f1 * 100.0 - f1).abs() < 1e-9,
        "{} vs {f1}",
        a.dev.macro_f1
    );

    // Predictions for every dev and test sentence.
    assert_eq!(a.dev.predictions.len(), 32);
    assert!(a.dev.predictions.iter().all(|&p| p < 5));
    let test = a.test.as_ref().expect("test predictions");
    assert_eq!(test.predictions.len(), 16);

    // The saved classifier reproduces the dev predictions (and loss) exactly.
    assert!(a.record_path.exists());
    assert!(first.path().join(CLASSIFIER_CONFIG_FILE).exists());
    assert!(first.path().join(FINETUNE_CONFIG_FILE).exists());
    let device = Default::default();
    let saved = load_classifier::<Inner>(first.path(), &device).expect("load classifier");
    assert_eq!(saved.config, a.classifier_config);
    assert_eq!(saved.finetune.as_ref().map(|f| f.seed), Some(7));
    let again = evaluate(&saved.model, &data.dev, 5, data.pad_id, &device).expect("evaluate");
    assert_eq!(again.predictions, a.dev.predictions);
    assert_eq!(again.accuracy, a.dev.accuracy);
    // Another batch size pads differently: the same predictions, losses equal to rounding.
    let (l1, l2) = (again.loss.expect("loss"), a.dev.loss.expect("loss"));
    assert!((l1 - l2).abs() < 1e-5, "{l1} vs {l2}");

    // Same seed, same backend: the same run (same shuffles, dropout masks and head, hence
    // bit for bit the same summaries, predictions and weights), even with another thread
    // seeding and drawing from the backend's generator meanwhile. (ndarray's optional SIMD
    // kernels, which round by memory alignment, are kept off in this workspace.)
    let b = with_generator_busy(|| run(&config(second.path()), &data));
    same_run(&a, &b);
}

#[test]
fn pretrain_option_leaves_the_llama_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path())
        .with_epochs(1)
        .with_option(FinetuneOption::Pretrain)
        // Exercises the plain progress lines (stdout is not a terminal under `cargo test`).
        .with_log_every(2);
    let data = FinetuneData {
        // A short slice may miss a class; the dev labels must still be classes of the head.
        num_labels: 5,
        ..data(&cfg, 32, 16, 0)
    };
    let outcome = run(&cfg, &data);

    let device = Default::default();
    let base = load_checkpoint::<Inner>(
        &fixture("models/stories260K/stories260K.bin"),
        &LoadOptions::default(),
        &device,
    )
    .expect("load stories260K");
    let values = |t: Tensor<Inner, 2>| t.into_data().to_vec::<f32>().expect("f32");
    let trained = &outcome.model.llama;
    assert_eq!(
        values(trained.tok_embeddings.weight.val()),
        values(base.model.tok_embeddings.weight.val())
    );
    assert_eq!(
        values(trained.layers[4].feed_forward.w2.weight.val()),
        values(base.model.layers[4].feed_forward.w2.weight.val())
    );
    assert!(outcome.test.is_none());
    assert_eq!(outcome.dev.predictions.len(), 16);
}

/// A run stopped mid-epoch, resumed, stopped again across an epoch boundary and resumed to
/// the end is the straight run: the same best model bit for bit, the same epoch summaries and
/// predictions (batch order and dropout masks come from the position; the optimizer state is
/// restored).
#[test]
fn stopped_and_resumed_runs_equal_a_straight_run() {
    let straight = tempfile::tempdir().expect("tempdir");
    let split = tempfile::tempdir().expect("tempdir");
    // 40 sentences at batch 8: 5 steps per epoch; a train row every 3 steps and at the end
    // of each epoch.
    let cfg = config(straight.path()).with_epochs(2).with_log_every(3);
    let data = data5(&cfg, 40, 16, 8);
    let a = run(&cfg, &data);

    let cfg = config(split.path()).with_epochs(2).with_log_every(3);
    let budget = |steps, resume| RunControl {
        resume,
        max_steps: Some(steps),
        ..RunControl::default()
    };
    let at = stopped_at(run_with(&cfg, &data, &budget(3, false)));
    assert_eq!(
        at,
        Position {
            epoch: 1,
            batches_done: 3
        }
    );
    let at = stopped_at(run_with(&cfg, &data, &budget(4, true)));
    assert_eq!(
        at,
        Position {
            epoch: 2,
            batches_done: 2
        }
    );
    let resume = RunControl {
        resume: true,
        ..RunControl::default()
    };
    let b = run_with(&cfg, &data, &resume).expect("resumed run");
    same_run(&a, &b);

    // metrics.csv: the same rows, and a train row closing each epoch (steps 5 and 10) beside
    // those of every third step.
    let rows = |dir: &Path| {
        read_metrics(&dir.join(METRICS_FILE))
            .expect("metrics.csv")
            .into_iter()
            .map(|r| (r.epoch, r.step, r.split, r.loss.map(f64::to_bits)))
            .collect::<Vec<_>>()
    };
    let straight_rows = rows(straight.path());
    assert_eq!(straight_rows, rows(split.path()));
    let (t, d) = (Split::Train, Split::Dev);
    let expected = [
        (1, 3, t),
        (1, 5, t),
        (1, 5, d),
        (2, 6, t),
        (2, 9, t),
        (2, 10, t),
        (2, 10, d),
    ];
    let found: Vec<_> = straight_rows.iter().map(|r| (r.0, r.1, r.2)).collect();
    assert_eq!(found, expected);
}

/// An epoch shorter than `log_every` still gets its train row, and an epoch that ends on a
/// logged step gets no second one.
#[test]
fn every_epoch_ends_with_one_train_row_whatever_log_every_is() {
    let (t, d) = (Split::Train, Split::Dev);
    // 24 sentences at batch 8: 3 steps per epoch.
    for (log_every, expected) in [
        (50, vec![(1, 3, t), (1, 3, d), (2, 6, t), (2, 6, d)]),
        (3, vec![(1, 3, t), (1, 3, d), (2, 6, t), (2, 6, d)]),
        (
            2,
            vec![
                (1, 2, t),
                (1, 3, t),
                (1, 3, d),
                (2, 4, t),
                (2, 6, t),
                (2, 6, d),
            ],
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config(dir.path()).with_log_every(log_every);
        run(&cfg, &data5(&cfg, 24, 8, 0));
        let rows = read_metrics(&dir.path().join(METRICS_FILE)).expect("metrics.csv");
        let found: Vec<_> = rows.iter().map(|r| (r.epoch, r.step, r.split)).collect();
        assert_eq!(found, expected, "log_every {log_every}");
        // The epoch's last row covers the steps since the previous one: a mean loss.
        assert!(rows.iter().all(|r| r.loss.is_some_and(f64::is_finite)));
    }
}

/// With `group_by_length` the batches change (64 sentences at batch 8 make megabatches of
/// two batches, so sentences move between batches), and a run stopped mid-epoch and resumed
/// is still the straight run bit for bit: the grouped order is a function of the position.
#[test]
fn a_length_grouped_run_resumes_exactly_and_trains_other_batches() {
    let plain = tempfile::tempdir().expect("tempdir");
    let straight = tempfile::tempdir().expect("tempdir");
    let split = tempfile::tempdir().expect("tempdir");
    let cfg = config(plain.path()).with_epochs(2);
    let data = data5(&cfg, 64, 16, 0);
    let p = run(&cfg, &data);
    let a = run(&config(straight.path()).with_group_by_length(true), &data);
    assert!(weights(&p) != weights(&a), "grouping changed nothing");

    let cfg = config(split.path()).with_group_by_length(true);
    let stop = RunControl {
        max_steps: Some(5),
        ..RunControl::default()
    };
    let at = stopped_at(run_with(&cfg, &data, &stop));
    assert_eq!(
        at,
        Position {
            epoch: 1,
            batches_done: 5
        }
    );
    let resume = RunControl {
        resume: true,
        ..RunControl::default()
    };
    // Resuming in the plain order is another run, refused.
    let err = run_with(&config(split.path()), &data, &resume)
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(
            err,
            FinetuneError::Resume(ResumeError::Mismatch {
                what: "group by length",
                ..
            })
        ),
        "{err}"
    );
    let b = run_with(&cfg, &data, &resume).expect("resumed run");
    same_run(&a, &b);
}

/// The case: one epoch, then the same run resumed for a second epoch, equals two
/// epochs straight.
#[test]
fn a_finished_run_resumed_with_more_epochs_equals_a_longer_run() {
    let straight = tempfile::tempdir().expect("tempdir");
    let split = tempfile::tempdir().expect("tempdir");
    let cfg = config(straight.path()).with_epochs(2);
    let data = data5(&cfg, 24, 16, 0);
    let a = run(&cfg, &data);

    let one = run(&config(split.path()).with_epochs(1), &data);
    assert_eq!(one.epochs.len(), 1);
    let resume = RunControl {
        resume: true,
        ..RunControl::default()
    };
    let b = run_with(&config(split.path()).with_epochs(2), &data, &resume).expect("resumed");
    same_run(&a, &b);
}

#[test]
fn resuming_checks_the_saved_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path()).with_epochs(1);
    let data = data5(&cfg, 16, 8, 0);
    let resume = RunControl {
        resume: true,
        ..RunControl::default()
    };
    // Nothing saved yet.
    let err = run_with(&cfg, &data, &resume).map(|_| ()).unwrap_err();
    assert!(
        matches!(err, FinetuneError::Resume(ResumeError::NotFound(_))),
        "{err}"
    );
    assert!(err.to_string().contains("start without --resume"), "{err}");

    let stop = RunControl {
        max_steps: Some(1),
        ..RunControl::default()
    };
    stopped_at(run_with(&cfg, &data, &stop));
    // Another learning rate is another run.
    let err = run_with(&cfg.clone().with_lr(5e-4), &data, &resume)
        .map(|_| ())
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            FinetuneError::Resume(ResumeError::Mismatch { what: "lr", .. })
        ),
        "{msg}"
    );
    assert!(msg.contains("0.001") && msg.contains("0.0005"), "{msg}");
    // So is other training data.
    let other = data5(&cfg, 15, 8, 0);
    let err = run_with(&cfg, &other, &resume).map(|_| ()).unwrap_err();
    assert!(err.to_string().contains("training data"), "{err}");
    // A corrupt state file is an error naming it, not a panic.
    std::fs::write(dir.path().join("resume.json"), "{ not json").expect("write");
    let err = run_with(&cfg, &data, &resume).map(|_| ()).unwrap_err();
    assert!(
        matches!(err, FinetuneError::Resume(ResumeError::Corrupt { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("resume.json"), "{err}");
}
