"""Append-only, named schema migrations. The schema version of a file is the number of migrations applied.

The big tables (windows, unit_stats, records, samples, token_means) carry no primary key: DuckDB keeps an
in-memory index per key, and a run's rows are always written (and replaced) whole by the store.

Never edit a migration that has shipped: add a new one.
"""

MIGRATIONS: list[tuple[str, str]] = [
    (
        "001_initial",
        """
        CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR);
        CREATE TABLE models (
            model_id VARCHAR PRIMARY KEY, name VARCHAR, source VARCHAR, architecture VARCHAR,
            n_layers INTEGER, d_mlp INTEGER, hook_point VARCHAR, act_fn VARCHAR, gated BOOLEAN,
            weights_hash VARCHAR, tokenizer_id VARCHAR, prepend_bos BOOLEAN);
        CREATE TABLE vocab (tokenizer_id VARCHAR, token_id INTEGER, token VARCHAR, PRIMARY KEY (tokenizer_id, token_id));
        CREATE TABLE corpora (
            corpus_id VARCHAR PRIMARY KEY, name VARCHAR, source VARCHAR, text_hash VARCHAR,
            n_docs INTEGER, n_chars BIGINT);
        CREATE TABLE documents (corpus_id VARCHAR, doc_id INTEGER, title VARCHAR, PRIMARY KEY (corpus_id, doc_id));
        CREATE TABLE runs (
            run_id VARCHAR PRIMARY KEY, model_id VARCHAR, corpus_id VARCHAR, layers INTEGER[], params VARCHAR,
            windows_hash VARCHAR, n_windows INTEGER, n_tokens BIGINT, code_version VARCHAR, status VARCHAR,
            created_at TIMESTAMP, finished_at TIMESTAMP);
        CREATE TABLE windows (
            run_id VARCHAR, window_id INTEGER, doc_id INTEGER, token_offset INTEGER, token_ids INTEGER[]);
        CREATE TABLE unit_stats (
            run_id VARCHAR, layer SMALLINT, unit INTEGER, n_tokens BIGINT, mean DOUBLE, std DOUBLE,
            skewness DOUBLE, kurtosis DOUBLE, min REAL, max REAL, frac_active REAL,
            hist BLOB, quantile_boundaries REAL[]);
        CREATE TABLE records (
            run_id VARCHAR, layer SMALLINT, unit INTEGER, window_id INTEGER, acts BLOB);
        CREATE TABLE samples (
            run_id VARCHAR, layer SMALLINT, unit INTEGER, kind VARCHAR, bin SMALLINT, rank SMALLINT,
            window_id INTEGER, max_act REAL);
        CREATE TABLE token_means (
            run_id VARCHAR, layer SMALLINT, unit INTEGER, token_id INTEGER, mean REAL, count INTEGER);
        """,
    ),
    (
        "002_explanations",
        """
        CREATE TABLE explanations (
            explanation_id VARCHAR PRIMARY KEY, run_id VARCHAR, layer SMALLINT, unit INTEGER, explainer VARCHAR,
            params VARCHAR, text VARCHAR, created_at TIMESTAMP);
        CREATE TABLE simulations (
            simulation_id VARCHAR PRIMARY KEY, explanation_id VARCHAR, simulator VARCHAR, params VARCHAR,
            scoring_set VARCHAR, window_ids INTEGER[], simulated VARCHAR, score DOUBLE, rsquared DOUBLE,
            absolute_dev_explained DOUBLE, error VARCHAR, created_at TIMESTAMP);
        """,
    ),
    (
        "003_n2g",
        """
        CREATE TABLE n2g_graphs (
            run_id VARCHAR, layer SMALLINT, unit INTEGER, params VARCHAR, max_activation REAL, metrics VARCHAR,
            firing_f1 DOUBLE, baseline_firing_f1 DOUBLE, test_window_ids INTEGER[], n_patterns INTEGER,
            seconds REAL, created_at TIMESTAMP);
        CREATE TABLE n2g_patterns (
            run_id VARCHAR, layer SMALLINT, unit INTEGER, pattern INTEGER[], activation REAL);
        """,
    ),
    (
        "004_topics",
        """
        CREATE TABLE topic_sets (
            model_id VARCHAR, stats_id VARCHAR, layer SMALLINT, unit INTEGER, source VARCHAR, polarity VARCHAR,
            params VARCHAR, pool VARCHAR[], n_tokens INTEGER, reason VARCHAR, random_scores DOUBLE[],
            seconds REAL, created_at TIMESTAMP);
        CREATE TABLE topic_stars (
            model_id VARCHAR, stats_id VARCHAR, layer SMALLINT, unit INTEGER, source VARCHAR, polarity VARCHAR,
            star INTEGER, words VARCHAR[], center VARCHAR, mean_edge DOUBLE, npmi DOUBLE[]);
        CREATE TABLE topics (
            model_id VARCHAR, stats_id VARCHAR, layer SMALLINT, unit INTEGER, source VARCHAR, polarity VARCHAR,
            rank INTEGER, words VARCHAR[], score DOUBLE, star INTEGER, optimal BOOLEAN);
        """,
    ),
    (
        "005_units",
        # a unit is (source, layer, index): every unit-level row names its source ('mlp' = MLP neurons, the only
        # source before this migration; a dictionary id for SAE features). Topic tables called their projection
        # mode 'source': it becomes 'mode', and their units get a source too ('resid' for the residual-stream
        # dimensions of the lo-* modes).
        """
        ALTER TABLE runs ADD COLUMN source VARCHAR DEFAULT 'mlp';
        ALTER TABLE unit_stats ADD COLUMN source VARCHAR DEFAULT 'mlp';
        ALTER TABLE records ADD COLUMN source VARCHAR DEFAULT 'mlp';
        ALTER TABLE samples ADD COLUMN source VARCHAR DEFAULT 'mlp';
        ALTER TABLE token_means ADD COLUMN source VARCHAR DEFAULT 'mlp';
        ALTER TABLE explanations ADD COLUMN source VARCHAR DEFAULT 'mlp';
        ALTER TABLE n2g_graphs ADD COLUMN source VARCHAR DEFAULT 'mlp';
        ALTER TABLE n2g_patterns ADD COLUMN source VARCHAR DEFAULT 'mlp';
        ALTER TABLE topic_sets RENAME COLUMN source TO mode;
        ALTER TABLE topic_stars RENAME COLUMN source TO mode;
        ALTER TABLE topics RENAME COLUMN source TO mode;
        ALTER TABLE topic_sets ADD COLUMN unit_source VARCHAR DEFAULT 'mlp';
        ALTER TABLE topic_stars ADD COLUMN unit_source VARCHAR DEFAULT 'mlp';
        ALTER TABLE topics ADD COLUMN unit_source VARCHAR DEFAULT 'mlp';
        UPDATE topic_sets SET unit_source = 'resid' WHERE mode IN ('lo-c', 'lo-i');
        UPDATE topic_stars SET unit_source = 'resid' WHERE mode IN ('lo-c', 'lo-i');
        UPDATE topics SET unit_source = 'resid' WHERE mode IN ('lo-c', 'lo-i');
        """,
    ),
    (
        "006_dictionaries",
        # the dictionaries (SAEs, baseline directions) whose features are unit sources: where their weights are,
        # what they read, and their quality numbers
        """
        CREATE TABLE dictionaries (
            source VARCHAR PRIMARY KEY, model_id VARCHAR, name VARCHAR, format VARCHAR, architecture VARCHAR,
            layer SMALLINT, site VARCHAR, d_in INTEGER, d_sae INTEGER, k INTEGER, path VARCHAR, meta VARCHAR,
            created_at TIMESTAMP
        );
        """,
    ),
    (
        "007_pool_dropped",
        # why a topic pool left tokens out ({reason: tokens}, JSON); NULL for pools stored before
        """
        ALTER TABLE topic_sets ADD COLUMN pool_dropped VARCHAR;
        """,
    ),
    (
        "008_baselines_lists_search",
        # explanation-blind predictors (token-lookup) score a unit, not an explanation: their simulations move to
        # one baseline row per unit and record set (the newest); token bytes (to show byte-split characters
        # whole); named lists of units; explanation embeddings for semantic search
        """
        CREATE TABLE baselines (
            run_id VARCHAR, source VARCHAR, layer SMALLINT, unit INTEGER, predictor VARCHAR, params VARCHAR,
            scoring_set VARCHAR, window_ids INTEGER[], predicted VARCHAR, score DOUBLE, rsquared DOUBLE,
            absolute_dev_explained DOUBLE, max_activation REAL, error VARCHAR, created_at TIMESTAMP);
        INSERT INTO baselines
            SELECT e.run_id, e.source, e.layer, e.unit, s.simulator, s.params, s.scoring_set, s.window_ids,
                   s.simulated, s.score, s.rsquared, s.absolute_dev_explained, NULL, s.error, s.created_at
            FROM simulations s JOIN explanations e USING (explanation_id) WHERE s.simulator = 'token-lookup'
            QUALIFY row_number() OVER (PARTITION BY e.run_id, e.source, e.layer, e.unit, s.scoring_set
                                       ORDER BY s.error IS NOT NULL, s.created_at DESC) = 1;
        DELETE FROM simulations WHERE simulator = 'token-lookup';
        ALTER TABLE vocab ADD COLUMN bytes BLOB;
        CREATE TABLE unit_lists (name VARCHAR PRIMARY KEY, description VARCHAR, created_at TIMESTAMP,
                                 updated_at TIMESTAMP);
        CREATE TABLE unit_list_items (
            list_name VARCHAR, model_id VARCHAR, source VARCHAR, layer SMALLINT, unit INTEGER, note VARCHAR,
            added_at TIMESTAMP);
        CREATE TABLE explanation_vectors (explanation_id VARCHAR, encoder VARCHAR, vector FLOAT[],
                                          PRIMARY KEY (explanation_id, encoder));
        """,
    ),
    (
        "009_unit_effects",
        # the causal lens: a unit's ablation effect over its records (loss change, tokens promoted / suppressed)
        """
        CREATE TABLE unit_effects (
            run_id VARCHAR, source VARCHAR, layer SMALLINT, unit INTEGER, mode VARCHAR, params VARCHAR,
            n_records INTEGER, n_positions INTEGER, mean_loss_change DOUBLE, mean_loss_change_top DOUBLE,
            promoted INTEGER[], promoted_values DOUBLE[], suppressed INTEGER[], suppressed_values DOUBLE[],
            seconds REAL, created_at TIMESTAMP);
        """,
    ),
    (
        "010_calibration",
        # the calibrated simulator's fit and scores (JSON), per simulation and baseline; NULL where not fitted
        """
        ALTER TABLE simulations ADD COLUMN calibration VARCHAR;
        ALTER TABLE baselines ADD COLUMN calibration VARCHAR;
        """,
    ),
    (
        "011_api_usage",
        # what the API calls behind an explanation or simulation cost (JSON: requests, cached, tokens); NULL else
        """
        ALTER TABLE explanations ADD COLUMN usage VARCHAR;
        ALTER TABLE simulations ADD COLUMN usage VARCHAR;
        """,
    ),
    (
        "012_topic_contributions",
        # each topic word's mean NPMI with the topic's other words; stars are stored from now on without their
        # NPMI matrix (NULL: ~7x the rest of a unit's topics, ≈ 15 GB for a whole model); older rows keep theirs
        """
        ALTER TABLE topics ADD COLUMN contrib FLOAT[];
        """,
    ),
    (
        "013_simulations_by_explanation",
        # an explanation's simulations are read by its id (every unit page): without an index that read scans
        # every simulation of the file (12 ms at 524k, bench/scale_store.py), with one it is a lookup (0.5 ms)
        """
        CREATE INDEX simulations_by_explanation ON simulations (explanation_id);
        """,
    ),
    (
        "014_token_z",
        # a unit's z on a token, stored with the row: a token search then filters one table instead of joining every
        # unit's statistics (3.8x the demo's time at 524k units, bench/scale_store.py)
        """
        ALTER TABLE token_means ADD COLUMN z DOUBLE;
        UPDATE token_means t SET z = (t.mean - u.mean) / nullif(u.std, 0) FROM unit_stats u
            WHERE u.run_id = t.run_id AND u.source = t.source AND u.layer = t.layer AND u.unit = t.unit;
        """,
    ),
    (
        "015_scorer_results",
        # scorers beside simulation (embedding, detection, fuzz, output: analysis/scorers) with 95 % intervals; the
        # sentence vectors of windows the embedding scorer compares explanations with (once per window, every unit);
        # simulations' and baselines' intervals (NULL for those scored before)
        """
        CREATE TABLE scorer_results (
            result_id VARCHAR PRIMARY KEY, explanation_id VARCHAR, scorer VARCHAR, params VARCHAR, metric VARCHAR,
            score DOUBLE, lo DOUBLE, hi DOUBLE, n_pos INTEGER, n_neg INTEGER, metrics VARCHAR, examples VARCHAR,
            notes VARCHAR, error VARCHAR, usage VARCHAR, created_at TIMESTAMP);
        CREATE INDEX scorer_results_by_explanation ON scorer_results (explanation_id);
        CREATE TABLE window_vectors (run_id VARCHAR, window_id INTEGER, encoder VARCHAR, vector FLOAT[]);
        ALTER TABLE simulations ADD COLUMN lo DOUBLE;
        ALTER TABLE simulations ADD COLUMN hi DOUBLE;
        ALTER TABLE baselines ADD COLUMN lo DOUBLE;
        ALTER TABLE baselines ADD COLUMN hi DOUBLE;
        """,
    ),
]

SCHEMA_VERSION = len(MIGRATIONS)
