"""Cross-speaker audio-lip models trained over a whole dataset (JEAN section 3.1, spec 2.3-2.4 and 4.5).

* :class:`~nerf.audio_lip.models.LandmarkAE`: pose-free landmarks -> an eyes-nose code and a mouth code, trained by
  swapping mouths between frames of one clip;
* :class:`~nerf.audio_lip.models.AudioLipEncoder`: a log-mel window -> a 64-d code aligned (InfoNCE) with the frozen
  mouth code, the audio input the avatars can be conditioned on;
* :class:`~nerf.audio_lip.models.SyncScorer`: mouth crops over 5 frames and the matching 0.2 s of audio -> two
  embeddings, trained separately, and scored with the SyncNet protocol (:mod:`nerf.audio_lip.scoring`).

Nothing here imports Ray or MLflow: ``jobs/train_audio.py`` runs these trainers on Ray Train and tracks them.
"""
