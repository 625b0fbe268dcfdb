CREATE TABLE corpora(corpus_id VARCHAR PRIMARY KEY, "name" VARCHAR, "source" VARCHAR, text_hash VARCHAR, n_docs INTEGER, n_chars BIGINT);
CREATE TABLE documents(corpus_id VARCHAR, doc_id INTEGER, title VARCHAR, PRIMARY KEY(corpus_id, doc_id));
CREATE TABLE explanations(explanation_id VARCHAR PRIMARY KEY, run_id VARCHAR, layer SMALLINT, unit INTEGER, explainer VARCHAR, params VARCHAR, "text" VARCHAR, created_at TIMESTAMP);
CREATE TABLE meta("key" VARCHAR PRIMARY KEY, "value" VARCHAR);
CREATE TABLE models(model_id VARCHAR PRIMARY KEY, "name" VARCHAR, "source" VARCHAR, architecture VARCHAR, n_layers INTEGER, d_mlp INTEGER, hook_point VARCHAR, act_fn VARCHAR, gated BOOLEAN, weights_hash VARCHAR, tokenizer_id VARCHAR, prepend_bos BOOLEAN);
CREATE TABLE n2g_graphs(run_id VARCHAR, layer SMALLINT, unit INTEGER, params VARCHAR, max_activation FLOAT, metrics VARCHAR, firing_f1 DOUBLE, baseline_firing_f1 DOUBLE, test_window_ids INTEGER[], n_patterns INTEGER, "seconds" FLOAT, created_at TIMESTAMP);
CREATE TABLE n2g_patterns(run_id VARCHAR, layer SMALLINT, unit INTEGER, pattern INTEGER[], activation FLOAT);
CREATE TABLE records(run_id VARCHAR, layer SMALLINT, unit INTEGER, window_id INTEGER, acts BLOB);
CREATE TABLE runs(run_id VARCHAR PRIMARY KEY, model_id VARCHAR, corpus_id VARCHAR, layers INTEGER[], params VARCHAR, windows_hash VARCHAR, n_windows INTEGER, n_tokens BIGINT, code_version VARCHAR, status VARCHAR, created_at TIMESTAMP, finished_at TIMESTAMP);
CREATE TABLE samples(run_id VARCHAR, layer SMALLINT, unit INTEGER, kind VARCHAR, bin SMALLINT, rank SMALLINT, window_id INTEGER, max_act FLOAT);
CREATE TABLE simulations(simulation_id VARCHAR PRIMARY KEY, explanation_id VARCHAR, simulator VARCHAR, params VARCHAR, scoring_set VARCHAR, window_ids INTEGER[], simulated VARCHAR, score DOUBLE, rsquared DOUBLE, absolute_dev_explained DOUBLE, "error" VARCHAR, created_at TIMESTAMP);
CREATE TABLE token_means(run_id VARCHAR, layer SMALLINT, unit INTEGER, token_id INTEGER, mean FLOAT, count INTEGER);
CREATE TABLE topics(model_id VARCHAR, stats_id VARCHAR, layer SMALLINT, unit INTEGER, "source" VARCHAR, polarity VARCHAR, rank INTEGER, words VARCHAR[], score DOUBLE, star INTEGER, optimal BOOLEAN);
CREATE TABLE topic_sets(model_id VARCHAR, stats_id VARCHAR, layer SMALLINT, unit INTEGER, "source" VARCHAR, polarity VARCHAR, params VARCHAR, pool VARCHAR[], n_tokens INTEGER, reason VARCHAR, random_scores DOUBLE[], "seconds" FLOAT, created_at TIMESTAMP);
CREATE TABLE topic_stars(model_id VARCHAR, stats_id VARCHAR, layer SMALLINT, unit INTEGER, "source" VARCHAR, polarity VARCHAR, star INTEGER, words VARCHAR[], center VARCHAR, mean_edge DOUBLE, npmi DOUBLE[]);
CREATE TABLE unit_stats(run_id VARCHAR, layer SMALLINT, unit INTEGER, n_tokens BIGINT, mean DOUBLE, std DOUBLE, skewness DOUBLE, kurtosis DOUBLE, min FLOAT, max FLOAT, frac_active FLOAT, hist BLOB, quantile_boundaries FLOAT[]);
CREATE TABLE vocab(tokenizer_id VARCHAR, token_id INTEGER, token VARCHAR, PRIMARY KEY(tokenizer_id, token_id));
CREATE TABLE windows(run_id VARCHAR, window_id INTEGER, doc_id INTEGER, token_offset INTEGER, token_ids INTEGER[]);

