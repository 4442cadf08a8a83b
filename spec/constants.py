"""Every constant of the protocol, in one place, as tables.

Sections: protocol constants (presets in spec/presets.py), then the canonical
arithmetic of the engine and its NumPy reference.
"""

# ---------------------------------------------------------------------------
# Protocol constants (spec owner). Values that differ between networks are
# presets (spec/presets.py), carried in the state's ChainConfig.
# ---------------------------------------------------------------------------

# Domain tags: every hash that commits to something names what it commits to,
# so a digest of one kind can never be replayed as another (e.g. a signed
# iteration message as a signed transaction).
DOMAIN_TENSOR = b"BWS/tensor"
DOMAIN_TRANSACTION = b"BWS/transaction"
DOMAIN_ITERATION_MESSAGE = b"BWS/iteration-message"
DOMAIN_NONCE_SEED = b"BWS/nonce-seed"
DOMAIN_NONCE = b"BWS/nonce"
DOMAIN_HEADER_COMMITMENT = b"BWS/header-commitment"
DOMAIN_INPUT_MASK = b"BWS/input-mask"
DOMAIN_POW = b"BWS/pow"
DOMAIN_TASK_ID = b"BWS/task-id"
DOMAIN_GROUP_SELECTION = b"BWS/group-selection"

# Tensor dtypes that may be committed (docs/interfaces.md); floats never are.
TENSOR_DTYPE_CODES = {"int8": 1, "int16": 2, "int32": 3, "int64": 4, "uint8": 5, "uint32": 6}
# What a decoded tensor bundle may hold (spec/tensors.py): bounds the work untrusted bytes can cause.
MAX_BUNDLE_TENSORS = 4096
MAX_TENSOR_DIMS = 8

# Staking roles
ROLE_MINER = 0
ROLE_SUPERVISOR = 1
ROLE_EVALUATOR = 2
ROLES = (ROLE_MINER, ROLE_SUPERVISOR, ROLE_EVALUATOR)

# Task lifecycle states
TASK_SUBMITTED = 0       # fee escrowed, waiting for a group
TASK_GROUP_SELECTED = 1  # group drawn, members fetching data
TASK_TRAINING = 2        # PoUW blocks may carry the task's iterations
TASK_EVALUATION = 3      # test set revealed, evaluators score the final models
TASK_FINALIZED = 4       # fee paid out (terminal)
TASK_CANCELLED = 5       # refunded on the client's request (terminal)
TASK_EXPIRED = 6         # past the deadline unevaluated, or no group drawn: proven training paid, rest refunded (terminal)
TERMINAL_TASK_STATUSES = (TASK_FINALIZED, TASK_CANCELLED, TASK_EXPIRED)

# Size limits (each bounds what a decoder accepts)
MAX_TRANSACTIONS_PER_BLOCK = 1024
MAX_TASK_DEFINITION_BYTES = 65536
MAX_TASK_DEFINITION_DEPTH = 32           # nesting of its JSON arrays and objects
MAX_TASK_DEFINITION_INTEGER_DIGITS = 20  # an integer in it fits 20 digits (a uint64 does)
MAX_GROUP_SIZE = 64
SUPERVISORS_PER_TASK = 1
EVALUATORS_PER_TASK = 1
MAX_MERKLE_DEPTH = 32         # dataset of at most 2**32 batches
MAX_MAP_ENTRIES = 2**32 - 1   # accounts, stakes, tasks
MAX_GENESIS_ENTRIES = 4096
MAX_TASK_ITERATIONS = 2**31 - 1  # the replayed model state counts its steps in an int32
MAX_TASKS = 4096              # tasks in the state, open or ended and kept for disputes: bounds a block's lifecycle work
MAX_TASK_BLOCKS = 2**20       # a submitted task's evaluation deadline is at most this many blocks ahead

# Fee split of a finalized task, in basis points of the escrowed payment;
# the rest goes to the group's miners in proportion to their recorded iterations.
BASIS_POINTS = 10000
BEST_MODEL_SHARE_BP = 2000    # to the miner whose final model scored best
SUPERVISOR_SHARE_BP = 500     # split equally among the task's supervisors
EVALUATOR_SHARE_BP = 500      # to the evaluator whose result finalized the task

# Slashing: a proven cheat loses its whole miner stake; the disputer gets this
# share, the rest is burned (so a sybil cannot slash itself at a profit).
SLASH_REWARD_SHARE_BP = 5000
# A FraudProof whose replay matches the message (a false accusation) is
# included and burns this much of the disputer's balance: it made every node
# replay an iteration for nothing. 10 coin.
FALSE_DISPUTE_PENALTY = 10 * 10**8
# A block carries at most this many FraudProofs. A node that does not replay
# iterations takes their outcomes (proven or false) from the block's state
# root, trying each of the 2**n; the bound keeps that cheap and the same rule
# for every node (else a block with more would split such nodes off).
MAX_FRAUD_PROOFS_PER_BLOCK = 4

# Proof of useful work
WORK_PASSES_PER_ITERATION = 3  # forward + backward (activations and weights): ~3x the forward MACs
MAX_TARGET = 2**256 - 1
RETARGET_CLAMP = 4             # one retarget moves the target by at most x4 or /4
MAX_HALVINGS = 64              # after 64 halvings the block reward is 0
MAX_FUTURE_BLOCK_SECONDS = 120 # a node holds back blocks further ahead of its clock
# An iteration trains on its batch with each input value dropped (set to 0) when its
# byte of the header-keyed mask is below this: 1 value in 16 (pouw.compute_input_mask).
INPUT_DROP_THRESHOLD = 16

# ---------------------------------------------------------------------------
# Canonical arithmetic (engine and spec/reference share these numbers, nothing else)
# ---------------------------------------------------------------------------

# Fixed-point formats: an int32 `q` with F fractional bits stands for q / 2**F.
# Every value the engine and the reference compute is an integer; these numbers
# fix what the integers mean. docs/engine.md explains the choices.
ACT_FRAC_BITS = 16       # inputs, activations, regression targets (range +-32768)
PARAM_FRAC_BITS = 24     # parameters and updates (range +-128)
GRAD_FRAC_BITS = 28      # back-propagated deltas, parameter gradients, Adam m, SGD velocity (range +-8)
HYPER_FRAC_BITS = 30     # hyper-parameters (learning rate, betas, momentum, dropout scale)
PROB_FRAC_BITS = 30      # softmax probabilities and the exp table
ADAM_V_FRAC_BITS = 48    # Adam's second moment (int64)

# Contractions: each operand is normalised to a signed integer of 7*slices+1 bits
# and split into `slices` int8 digits of 7 bits (the top digit signed).
SLICE_DIGIT_BITS = 7
ALLOWED_SLICES = (1, 2, 3)
# An int8 x int8 dot accumulates in int32: K * 128 * 128 must stay below 2**31.
MAX_CONTRACTION_SIZE = (2**31 - 1) // (128 * 128)

INT32_MAX = 2**31 - 1
INT32_MIN = -(2**31 - 1)  # saturation is symmetric: -2**31 never appears

# Threefry-2x32 (Salmon et al. 2011), 20 rounds, as in JAX.
THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
THREEFRY_PARITY = 0x1BD11BDA
# Key derivation tags: key(purpose, a, b) = threefry(seed_key, (tag << 24 | a, b)).
RANDOM_TAG_INIT = 1
RANDOM_TAG_DROPOUT = 2


def _build_tables():
    """Lookup tables of the nonlinearities, from exact decimal arithmetic
    (Python's `decimal` is software arithmetic: the same digits on every
    machine), rounded half up to integers."""
    from decimal import Decimal, getcontext, ROUND_HALF_UP

    getcontext().prec = 60

    def to_int(value: Decimal, frac_bits: int) -> int:
        return int((value * (2**frac_bits)).to_integral_value(rounding=ROUND_HALF_UP))

    step = Decimal(1) / Decimal(2**TABLE_STEP_BITS_INV)
    sigmoid = tuple(
        to_int(1 / (1 + (-(TABLE_SIGMOID_MIN + i * step)).exp()), ACT_FRAC_BITS)
        for i in range(TABLE_SIGMOID_SIZE)
    )
    exp = tuple(to_int((-TABLE_EXP_SPAN + i * step).exp(), PROB_FRAC_BITS) for i in range(TABLE_EXP_SIZE))
    log = tuple(to_int((1 + Decimal(k) / 256).ln(), ACT_FRAC_BITS) for k in range(257))
    ln2 = to_int(Decimal(2).ln(), ACT_FRAC_BITS)
    rsqrt = tuple(to_int(1 / Decimal(max(m, 1)).sqrt(), RSQRT_FRAC_BITS) for m in range(RSQRT_TABLE_SIZE))
    return sigmoid, exp, log, ln2, rsqrt


# Tables are sampled every 2**-6 and interpolated linearly between samples:
# an input x (ACT_FRAC_BITS) is clipped to the table's range, its offset from
# the first sample is split into index = offset >> 10 and remainder = offset & 1023,
# and y = T[i] + round_half_up((T[i+1] - T[i]) * remainder / 1024).
TABLE_STEP_BITS_INV = 6
TABLE_INDEX_SHIFT = ACT_FRAC_BITS - TABLE_STEP_BITS_INV   # 10
TABLE_SIGMOID_MIN = -16                                   # sigmoid sampled on [-16, 16]
TABLE_SIGMOID_SIZE = 32 * 2**TABLE_STEP_BITS_INV + 1       # 2049 samples, ACT_FRAC_BITS
TABLE_EXP_SPAN = 16                                       # exp sampled on [-16, 0]
TABLE_EXP_SIZE = TABLE_EXP_SPAN * 2**TABLE_STEP_BITS_INV + 1  # 1025 samples, PROB_FRAC_BITS
# LOG_TABLE[k] = ln(1 + k/256) (ACT_FRAC_BITS), k = 0..256, for the reported loss only.
# RSQRT_TABLE[m] = 1/sqrt(max(m, 1)) with RSQRT_FRAC_BITS, m < 4096: Adam's
# 1/sqrt(v) = RSQRT_TABLE[v >> 2j] * 2**-j with 2j the smallest even shift
# bringing v below 4096 (12 significant bits, ~11 bits of precision).
RSQRT_FRAC_BITS = 30
RSQRT_TABLE_SIZE = 4096
SIGMOID_TABLE, EXP_TABLE, LOG_TABLE, LN2_FIXED, RSQRT_TABLE = _build_tables()

# ---------------------------------------------------------------------------
# Task templates (templates/ owner)
# ---------------------------------------------------------------------------
# GAN template: the generator's noise input is drawn from
# key(RANDOM_TAG_GAN_NOISE, phase, step) (phase 0: the discriminator's half of
# the iteration, 1: the generator's), uniform in [-1, 1) with ACT_FRAC_BITS.
RANDOM_TAG_GAN_NOISE = 16
