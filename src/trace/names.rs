//! Every attribute and event name the gateway's spans carry, in one place:
//! the GenAI semantic conventions are still marked "Development" and rename
//! things between releases. Names no convention has yet (TTFVT, thinking
//! time) live under `thinkgate.`, never under `gen_ai.`.

// GenAI semantic conventions
pub const OPERATION_NAME: &str = "gen_ai.operation.name";
pub const REQUEST_MODEL: &str = "gen_ai.request.model";
pub const RESPONSE_MODEL: &str = "gen_ai.response.model";
pub const RESPONSE_ID: &str = "gen_ai.response.id";
pub const INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
pub const OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
pub const REASONING_OUTPUT_TOKENS: &str = "gen_ai.usage.reasoning.output_tokens";
pub const FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
pub const REQUEST_STREAM: &str = "gen_ai.request.stream";
pub const TIME_TO_FIRST_CHUNK: &str = "gen_ai.response.time_to_first_chunk";

// HTTP and general conventions
pub const HTTP_METHOD: &str = "http.request.method";
pub const HTTP_STATUS: &str = "http.response.status_code";
pub const URL_PATH: &str = "url.path";
pub const SERVER_ADDRESS: &str = "server.address";
pub const SERVER_PORT: &str = "server.port";
pub const ERROR_TYPE: &str = "error.type";

// thinkgate's own
pub const REQUEST_ID: &str = "thinkgate.request_id";
pub const TTFVT: &str = "thinkgate.ttfvt";
pub const THINKING_TIME: &str = "thinkgate.thinking_time";
pub const VISIBLE_TOKENS: &str = "thinkgate.usage.visible_tokens";
pub const TOKEN_SOURCE: &str = "thinkgate.token_source";
pub const BACKEND: &str = "thinkgate.backend";
pub const ARM: &str = "thinkgate.arm";
pub const POLICY: &str = "thinkgate.policy";
pub const OUTCOME: &str = "thinkgate.outcome";
pub const ACTIONS: &str = "thinkgate.actions";
pub const THINKING_BUDGET: &str = "thinkgate.thinking_budget";
pub const DEADLINE_MS: &str = "thinkgate.deadline_ms";
pub const PREDICTED_THINKING_TOKENS: &str = "thinkgate.predicted_thinking_tokens";
pub const LEG_KIND: &str = "thinkgate.leg.kind";
pub const LEG_CANCELLED: &str = "thinkgate.leg.cancelled";

// span events at the phase changes
pub const EV_UPSTREAM_HEAD: &str = "thinkgate.upstream_head";
pub const EV_FIRST_TOKEN: &str = "thinkgate.first_token";
pub const EV_THINKING_START: &str = "thinkgate.thinking_start";
pub const EV_THINKING_END: &str = "thinkgate.thinking_end";
pub const EV_FIRST_VISIBLE: &str = "thinkgate.first_visible_token";
/// Straggler actions are events named `thinkgate.` + the record's action
/// name (`thinkgate.retry`, `thinkgate.hedge_sent`, `thinkgate.forced_answer`).
pub const EV_ACTION_PREFIX: &str = "thinkgate.";
