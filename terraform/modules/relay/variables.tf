variable "stack" {
  description = "Prefix of every resource name: the `--stack` relay derives names from (`<stack>-events`, `<stack>-queue`, …)."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{1,40}[a-z0-9]$", var.stack))
    error_message = "stack: 3–42 lowercase letters, digits and dashes (it prefixes an S3 bucket name)."
  }
}

variable "lambda_artifacts" {
  description = "Directory holding the built zips: <dir>/relay-receiver/bootstrap.zip, … (`cargo lambda build --release --arm64 --output-format zip`)."
  type        = string
}

variable "target_url" {
  description = "The GraphQL target's URL. Sensitive: it may carry a token, and plans show it as (sensitive value)."
  type        = string
  sensitive   = true
}

variable "target_rate" {
  description = "The fleet's ceiling in requests/s; 0 lets the dispatchers discover the target's limit."
  type        = number
  default     = 0
}

variable "brand" {
  description = "The `brand` every delivered event is enriched with."
  type        = string
  default     = "testBrand"
}

variable "max_attempts" {
  description = "Attempts before an event goes to the dead-letter queue (`--max-attempts`). Rate-limited answers do not count."
  type        = number
  default     = 10
  validation {
    condition     = var.max_attempts >= 1
    error_message = "max_attempts must be at least 1."
  }
}

variable "max_age" {
  description = "Oldest an undelivered event may get before it is dead-lettered (`--max-age`, e.g. 24h)."
  type        = string
  default     = "24h"
}

variable "target_timeout" {
  description = "Timeout of one request to the target (`--target-timeout`). Keep it well under `dispatcher_timeout`."
  type        = string
  default     = "10s"
}

variable "max_in_flight" {
  description = "Most requests to the target in flight at once, per dispatcher instance (`--max-in-flight`)."
  type        = number
  default     = 256
}

variable "backoff_base" {
  description = "First retry waits up to this long; each further retry doubles it, with jitter (`--backoff-base`)."
  type        = string
  default     = "500ms"
}

variable "backoff_cap" {
  description = "No retry waits longer than this unless the target's Retry-After says so (`--backoff-cap`)."
  type        = string
  default     = "5m"
}

variable "document" {
  description = "GraphQL document sent for each event, the event being `$input` (`--document`); empty sends relay's own `createEvent` mutation. Only with events_per_request = 1."
  type        = string
  default     = ""
}

variable "store_timeout" {
  description = "Longest an ingest request waits for DynamoDB before answering 503 (`--store-timeout`); keep it under the source's budget."
  type        = string
  default     = "400ms"
}

variable "batch_timeout" {
  description = "The same for POST /events/batch (`--batch-timeout`)."
  type        = string
  default     = "5s"
}

variable "retention" {
  description = "How long a delivered event's DynamoDB item stays before TTL removes it (the S3 archive keeps it)."
  type        = string
  default     = "7d"
}

variable "dispatcher_max_concurrency" {
  description = "Most dispatcher instances at once (the SQS mapping's MaximumConcurrency, 2–1000)."
  type        = number
  default     = 4
}

variable "dispatcher_batch_size" {
  description = "Messages per dispatcher invocation; at least `events_per_request`, so an invocation can fill a request."
  type        = number
  default     = 10
}

variable "events_per_request" {
  description = "Events per GraphQL request (aliased mutations, one rate token each); 1 sends one event per request. For targets whose limit counts requests."
  type        = number
  default     = 1

  validation {
    condition     = var.events_per_request >= 1 && var.events_per_request <= 500
    error_message = "events_per_request must be from 1 to 500."
  }
}

variable "dispatcher_timeout" {
  description = "Dispatcher function timeout, seconds. The queue's visibility is six times this."
  type        = number
  default     = 60
}

variable "receiver_reserved_concurrency" {
  description = "Concurrency reserved for the receiver, so no other function can starve ingest."
  type        = number
  default     = 50
}

variable "api_throttle_rate" {
  description = "API Gateway stage throttling: steady requests/s."
  type        = number
  default     = 1000
}

variable "api_throttle_burst" {
  description = "API Gateway stage throttling: burst."
  type        = number
  default     = 2000
}

variable "xray_sampling_rate" {
  description = "Share of requests API Gateway traces (1.0: one X-Ray trace per event; the biggest line of the bill at scale)."
  type        = number
  default     = 1.0
}

variable "log_retention_days" {
  description = "CloudWatch Logs retention for the functions and API access logs."
  type        = number
  default     = 30
}

variable "archive_expiry_days" {
  description = "Days before archived events in S3 are deleted (they move to Glacier Instant Retrieval after 30)."
  type        = number
  default     = 400
}

variable "alarm_email" {
  description = "Subscribed to the alarm topic when set."
  type        = string
  default     = ""
}

variable "queue_age_alarm_seconds" {
  description = "Alarm when the oldest waiting message is older than this."
  type        = number
  default     = 300
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}

variable "authorizer_reserved_concurrency" {
  description = "Concurrency reserved for (and capping) the API key authorizer. Its answers are cached per key, so only new or wrong keys call it."
  type        = number
  default     = 10
}

variable "authorizer_cache_seconds" {
  description = "How long API Gateway keeps the authorizer's answer for one key (0 to 3600). A removed key stays valid this long."
  type        = number
  default     = 300
  validation {
    condition     = var.authorizer_cache_seconds >= 0 && var.authorizer_cache_seconds <= 3600
    error_message = "authorizer_cache_seconds is 0 to 3600."
  }
}

variable "waf_enabled" {
  description = "Put a WAF web ACL in front of the stage: a rate limit per source IP and one per API key. On in prod."
  type        = bool
  default     = false
}

variable "waf_requests_per_ip" {
  description = "Most requests one source IP may make in 5 minutes before WAF blocks it (429)."
  type        = number
  default     = 30000
  validation {
    condition     = var.waf_requests_per_ip >= 10
    error_message = "waf_requests_per_ip is at least 10 (WAF's floor)."
  }
}

variable "waf_requests_per_key" {
  description = "Most requests one API key may make in 5 minutes before WAF blocks it (429): the per-key throttle."
  type        = number
  default     = 150000
  validation {
    condition     = var.waf_requests_per_key >= 10
    error_message = "waf_requests_per_key is at least 10 (WAF's floor)."
  }
}

variable "require_signatures" {
  description = "Require every request to carry a Standard Webhooks signature too (the receiver reads the `<stack>/signing-secrets` secret)."
  type        = bool
  default     = false
}

variable "sign_target_requests" {
  description = "Sign every request to the target the Standard Webhooks way (the dispatcher reads the `whsec_` secret from `<stack>/target-signing-secret`; relay up's --target-signing-secret-ref)."
  type        = bool
  default     = false
}

variable "target_oauth_token_url" {
  description = "The target's OAuth2 token endpoint: the dispatcher gets a token by the client credentials grant, with the secret from `<stack>/target-oauth-client-secret` (relay up's --target-oauth-token-url). Empty: no OAuth2."
  type        = string
  default     = ""
}

variable "target_oauth_client_id" {
  description = "The OAuth2 client id, with target_oauth_token_url (relay up's --target-oauth-client-id)."
  type        = string
  default     = ""
}

variable "target_oauth_scopes" {
  description = "The scopes asked of the token endpoint, space-separated (relay up's --target-oauth-scopes). Empty: none."
  type        = string
  default     = ""
}

variable "target_mtls" {
  description = "The target asks for a client certificate: the dispatcher presents the one in `<stack>/target-client-certificate` (PEM chain and key; relay up's --target-client-cert)."
  type        = bool
  default     = false
}

variable "target_private_ca" {
  description = "The target's certificate is signed by a private CA: the dispatcher trusts the CAs in `<stack>/target-ca` (PEM) beside the system's (relay up's --target-ca)."
  type        = bool
  default     = false
}
