"""Custom socket types shared between the node modules (one definition each)."""
from comfy_api.latest import io

FaceModel = io.Custom("CONTINUITY_FACE_MODEL")      # a loaded face-analysis backend
Faces = io.Custom("CONTINUITY_FACES")               # detections per image, with the image index
Stitch = io.Custom("CONTINUITY_STITCH")             # crop records for pasting back
Scores = io.Custom("CONTINUITY_SCORES")             # similarity results
Character = io.Custom("CONTINUITY_CHARACTER")       # a character profile
Dataset = io.Custom("CONTINUITY_DATASET")           # a dataset version
TrainJob = io.Custom("CONTINUITY_TRAIN_JOB")        # a training job (id, folder, LoRA name)
Cast = io.Custom("CONTINUITY_CAST")                 # several characters (continuity.cast.Cast)
Tracks = io.Custom("CONTINUITY_TRACKS")             # face tracks of a shot (continuity.tracks.TrackSet)
TrackStitch = io.Custom("CONTINUITY_TRACK_STITCH")  # a track's crop windows for pasting back

CATEGORY = "Continuity"
