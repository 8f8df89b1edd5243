"""Column names used everywhere, so that no module spells them on its own."""

# Raw interactions, in the user's original ids
USER_ID = "user_id"
ITEM_ID = "item_id"
TIMESTAMP = "timestamp"
RATING = "rating"
ROW = "row"  # position in the source file: the documented tie-break for equal timestamps

# Internal ids: 1..N, with 0 reserved for padding
USER_IDX = "user_idx"
ITEM_IDX = "item_idx"

# Per-user sequences and split frames
ITEMS = "items"  # List[Int32] of item_idx, oldest first
TIMESTAMPS = "timestamps"  # List[Int64], aligned with ITEMS
HISTORY = "history"  # List[Int32]: what a model sees before predicting TARGET
HISTORY_TIMESTAMPS = "history_timestamps"  # List[Int64], aligned with HISTORY
TARGET = "target"  # Int32 item_idx to predict
TARGET_TIMESTAMP = "target_timestamp"  # Int64: when TARGET happened (what a request would not know)

# Item table (text side information)
TITLE = "title"
YEAR = "year"
GENRES = "genres"

PADDING_IDX = 0
